"""Quality of every variant of a built text model on sentences the build never saw, against its teacher.

    python benchmarks/text_quality.py --repository model_repository --model minilm \
        --text compression/corpus/python_docs.txt

Tokenizes the file's lines with the model folder's own `tokenizer.json` (as the server does), runs each
variant with ONNX Runtime (the server's session recipe) and prints, per variant, what the build
records on its held-out split: cosine_mean, cosine_min and neighbour_agreement for embedding models,
top-1 agreement with the teacher for classifiers. `--text` defaults to the held-out sentences the
build wrote (`heldout.txt`), which reproduces the manifest's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrepo.measure import quality, run  # noqa: E402
from modelrepo.session import open_session  # noqa: E402


def encode(folder: Path, manifest: dict, lines: list[str]) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    entry = manifest["tokenizer"]
    tokenizer = Tokenizer.from_file(str(folder / entry["file"]))
    tokenizer.enable_truncation(max_length=int(entry["max_length"]))
    pad = int(entry.get("pad_id") or 0)
    tokenizer.enable_padding(pad_id=pad, pad_token=tokenizer.id_to_token(pad) or "[PAD]")
    encodings = tokenizer.encode_batch(lines)
    columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
               "token_type_ids": [e.type_ids for e in encodings]}
    return {t["name"]: np.array(columns[t["name"]], np.int64) for t in manifest["inputs"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--text", type=Path, default=None, help="one sentence a line (default: heldout.txt)")
    args = parser.parse_args(argv)
    folder = args.repository / args.model
    manifest = json.loads((folder / "manifest.json").read_text())
    if "tokenizer" not in manifest:
        print(f"{args.model} is not a text model (no tokenizer in its manifest)", file=sys.stderr)
        return 2
    path = args.text or folder / manifest["data"].get("heldout_text", "heldout.txt")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    feeds = encode(folder, manifest, lines)
    outputs = {name: run(open_session(folder / v["file"], 2), feeds) for name, v in manifest["variants"].items()}
    teacher = outputs["teacher"]
    print(f"{args.model}: {len(lines)} sentences from {path}")
    for name, out in outputs.items():
        figures = quality(manifest["task"], out, None, teacher)
        print(f"  {name:<16} " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
