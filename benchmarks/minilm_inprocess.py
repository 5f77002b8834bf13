"""In-process ONNX Runtime speed of every variant of the `minilm` embedding model.

Build the model first (`python -m compression.minilm.build --out model_repository`), then:

    python benchmarks/minilm_inprocess.py [--repository model_repository] [--model minilm]
                                          [--threads 1] [--runs 200,60,12,60] [--json FILE]

Per variant: p50/p95 latency at batch 1 for short (16 tokens) and long (128 tokens) inputs, and
latency and throughput (sentences/s) at batch 32 of 128-token and of 16-token inputs; speed-ups are
p50 against the teacher. Inputs are real held-out sentences from the model folder (`heldout.npz`), joined to fill
each length. Sessions use the server's options (intra-op threads as given, 1 inter-op thread,
sequential, all graph optimisations, no spinning), and the variants are interleaved run by run so
that load from other processes falls on all of them alike. The model files are checked against
the manifest's sha256 first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compression.minilm.measure import (DEFAULT_RUNS, LATENCY_CASES, cpu_model,  # noqa: E402
                                        int8_features, latency_feeds, measure_latency, sha256_of)

__all__ = ["main"]


def _runs(text: str) -> dict[str, int]:
    values = [int(x) for x in text.split(",")]
    if len(values) != len(LATENCY_CASES) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--runs takes {len(LATENCY_CASES)} positive integers")
    return dict(zip(LATENCY_CASES, values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1)")
    parser.add_argument("--runs", type=_runs, default=dict(DEFAULT_RUNS),
                        help="timed runs for batch 1 x 16 tokens, 1 x 128, 32 x 128, 32 x 16 "
                             "(default 200,60,12,60)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    folder = args.repository / args.model
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {folder / 'manifest.json'}: {exc}", file=sys.stderr)
        return 1
    paths = {}
    for name, variant in manifest["variants"].items():
        path = folder / variant["file"]
        if sha256_of(path) != variant["sha256"]:
            print(f"error: {path} does not match its sha256 in the manifest", file=sys.stderr)
            return 1
        paths[name] = path
    heldout = np.load(folder / manifest["data"]["heldout_file"])
    feeds = latency_feeds(heldout["input_ids"], heldout["attention_mask"])

    timings = measure_latency(paths, feeds, args.runs, threads=args.threads)

    print(f"# {args.model}: in-process ONNX Runtime, {args.threads} intra-op thread(s), 1 inter-op, "
          f"CPU {cpu_model()} ({', '.join(int8_features())})")
    header = ["variant"]
    for case, (batch, tokens) in LATENCY_CASES.items():
        header += [f"b{batch} x {tokens} tok p50 / p95 ms"] + (["sentences/s"] if batch > 1 else []) + ["speed-up"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    teacher = timings.get("teacher")
    for name, t in timings.items():
        cells = [name]
        for case, (batch, _) in LATENCY_CASES.items():
            c = t[case]
            cells.append(f"{c['p50_ms']:.2f} / {c['p95_ms']:.2f}")
            if batch > 1:
                cells.append(f"{c['sentences_per_s']:.1f}")
            cells.append(f"{teacher[case]['p50_ms'] / c['p50_ms']:.2f}x" if teacher else "-")
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": args.threads, "cpu": cpu_model(),
                                         "int8_features": int8_features(), "variants": timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
