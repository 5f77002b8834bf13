"""`python -m compression.build`: train or load a teacher, make its variants, write a model folder."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from compression import evaluate
from compression.data import DATASETS, calibration_sample, load_data
from compression.distill import DistillOptions
from compression.errors import BuildError, UsageError
from compression.host import host_record, tool_versions
from compression.manifest import (PRIMARY_METRIC, SCHEMA_VERSION, sha256_file, validate,
                                  write_json_atomic)
from compression.progress import Progress
from compression.prune import IMPORTANCES, PruneOptions
from compression.quantize import ACTIVATION_TYPES, CALIBRATION_METHODS, QuantizeOptions
from compression.report import render_table
from compression.repository import staged_model_dir
from compression.teachers import TeacherOptions, resolve_teacher
from compression.train import TrainOptions
from compression.variants import VARIANTS, BuildContext, VariantOptions, plan

__all__ = ["BuildRequest", "build", "main", "make_parser", "parse_args"]

HELD_OUT = "heldout.npz"
CALIBRATION = "calibration.npz"
LATENCY_RUNS = {1: 200, 32: 100}
DEFAULT_VARIANTS = "distilled,pruned,int8"
INTERRUPTED = 130  # exit status after Ctrl-C or SIGTERM, as shells report a SIGINT death


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as a UsageError (one line, exit 2) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return values


def _ranged(kind: type, low: float, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> Callable[[str], Any]:
    """An argparse type that checks the bounds, so mistakes surface as usage errors up front."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        below = value < low or (low_open and value == low)
        above = high is not None and (value > high or (high_open and value == high))
        if below or above:
            bound = f"{'>' if low_open else '>='} {low}"
            if high is not None:
                bound += f" and {'<' if high_open else '<='} {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


def make_parser() -> argparse.ArgumentParser:

    p = _Parser(prog="python -m compression.build", description=(
        "Build a teacher and its compressed variants (ONNX) into a model repository folder "
        "<out>/<name>/ with manifest.json (docs/manifest.md). With no arguments: the built-in "
        "'digits' teacher into ./model_repository/digits/."))
    p.add_argument("--teacher", default="digits",
                   help="built-in teacher name (default: %(default)s)")
    p.add_argument("--data", default=None,
                   help="data set: a built-in name (default: the teacher's own, 'digits')")
    p.add_argument("--name", default=None, help="model name in the repository (default: the teacher name)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma list from {', '.join(VARIANTS)}; the teacher is always built "
                        "(default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("model_repository"),
                   help="repository root (default: ./%(default)s)")
    p.add_argument("--seed", type=_ranged(int, 0), default=0,
                   help="seed for the split, training and calibration sample (default: %(default)s)")
    p.add_argument("--threads", type=_ranged(int, 1), default=1,
                   help="ONNX Runtime intra-op threads for latency measurement (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")

    g = p.add_argument_group("teacher (built-in teachers are trained by the build)")
    g.add_argument("--teacher-epochs", type=_ranged(int, 1), default=60,
                   help="training epochs, best on validation kept (default: %(default)s)")

    g = p.add_argument_group("distilled (Hinton et al. 2015 knowledge distillation)")
    g.add_argument("--kd-temperature", type=_ranged(float, 0, low_open=True), default=4.0,
                   help="softmax temperature T (default: %(default)s)")
    g.add_argument("--kd-alpha", type=_ranged(float, 0, 1), default=0.9,
                   help="weight of the soft-target loss; 1-alpha weighs the labels (default: %(default)s)")
    g.add_argument("--student-hidden", type=_positive_ints, default=(300, 300),
                   help="student hidden widths, comma list (default: 300,300)")
    g.add_argument("--distill-epochs", type=_ranged(int, 1), default=150,
                   help="student epochs, also used for the no-teacher baseline (default: %(default)s)")

    g = p.add_argument_group("pruned (Torch-Pruning structural pruning + KD recovery)")
    g.add_argument("--prune-ratio", type=_ranged(float, 0, 1, low_open=True, high_open=True),
                   default=0.5,
                   help="fraction of each hidden layer's neurons removed (default: %(default)s, "
                        "which removes ~74%% of the parameters)")
    g.add_argument("--prune-steps", type=_ranged(int, 1), default=1,
                   help="prune in this many steps, fine-tuning after each (default: %(default)s)")
    g.add_argument("--prune-importance", choices=sorted(IMPORTANCES), default="magnitude-l2",
                   help="neuron importance criterion (default: %(default)s)")
    g.add_argument("--prune-finetune-epochs", type=_ranged(int, 0), default=40,
                   help="recovery epochs of KD from the teacher, in total (default: %(default)s)")

    g = p.add_argument_group("int8 (ONNX Runtime static quantization, QDQ)")
    g.add_argument("--int8-calibration-samples", type=_ranged(int, 1), default=256,
                   help="training rows used for calibration (default: %(default)s)")
    g.add_argument("--int8-calibration-method", choices=list(CALIBRATION_METHODS), default="minmax",
                   help="activation range calibration (default: %(default)s)")
    g.add_argument("--int8-per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="one weight scale per output channel (default: on)")
    g.add_argument("--int8-activation-type", choices=list(ACTIVATION_TYPES), default="uint8",
                   help="activation integer type (default: %(default)s)")
    return p


@dataclass(frozen=True)
class BuildRequest:
    """A validated command line."""

    teacher: str
    data: str
    name: str
    variants: list[str]
    out: Path
    seed: int
    threads: int
    args: argparse.Namespace


def parse_args(argv: list[str] | None) -> BuildRequest:
    """Parse and check everything that can be checked without training (exit 2 material)."""
    args = make_parser().parse_args(argv)
    source = resolve_teacher(args.teacher)
    data = args.data or source.default_data
    if data not in DATASETS:
        if data.endswith(".npz") and not Path(data).is_file():
            raise UsageError(f"data file not found: {data}")
        raise UsageError(f"unknown data set {data!r}; built-in data sets: {', '.join(DATASETS)}")
    name = args.name or source.name
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name.strip() != name:
        raise UsageError(f"invalid model name {name!r}: use a plain folder name")
    requested = [v.strip() for v in args.variants.split(",") if v.strip()]
    variants = plan(requested)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a directory")
    return BuildRequest(args.teacher, data, name, variants, args.out, args.seed, args.threads, args)


def _options(request: BuildRequest) -> tuple[TeacherOptions, VariantOptions]:
    """Teacher and variant options from the command line."""
    a, seed = request.args, request.seed
    teacher = TeacherOptions(train=TrainOptions(epochs=a.teacher_epochs, lr=1e-3,
                                                weight_decay=1e-4, seed=seed))
    variants = VariantOptions(
        student_hidden=a.student_hidden,
        distill=DistillOptions(a.kd_temperature, a.kd_alpha,
                               TrainOptions(epochs=a.distill_epochs, seed=seed)),
        prune=PruneOptions(ratio=a.prune_ratio, steps=a.prune_steps, importance=a.prune_importance,
                           finetune_epochs=a.prune_finetune_epochs),
        quantize=QuantizeOptions(calibration_samples=a.int8_calibration_samples,
                                 calibration_method=a.int8_calibration_method,
                                 per_channel=a.int8_per_channel,
                                 activation_type=a.int8_activation_type))
    return teacher, variants


def _make_all(ctx: BuildContext, folder: Path, names: list[str], began: float) -> dict[str, float]:
    """Run each variant's maker in order; return seconds spent per variant, the first counted
    from `began` (so the teacher's figure includes its training)."""
    seconds: dict[str, float] = {}
    for name in names:
        spec = VARIANTS[name]
        path = folder / name / "model.onnx"
        with ctx.progress.step(f"{name}: written {path.relative_to(folder)}"):
            ctx.made[name] = spec.make(ctx, spec, path)
            ctx.files[name] = path
        # Unserved baselines trained alongside a variant do not count toward its build time.
        aside = sum(b.get("build_seconds", 0.0) for b in ctx.made[name].baselines.values())
        seconds[name] = time.monotonic() - began - aside
        began = time.monotonic()
    return seconds


def _measure(ctx: BuildContext, name: str, threads: int, teacher_top1: np.ndarray,
             cpu: str) -> dict[str, Any]:
    """The manifest figures of one variant, measured on its ONNX file with ONNX Runtime."""
    path = ctx.files[name]
    with ctx.progress.step(f"{name}: evaluate and time (threads {threads})") as step:
        logits = evaluate.predict(evaluate.session(path), ctx.splits.x_test)
        quality = evaluate.classification_quality(logits, ctx.splits.y_test, teacher_top1)
        timing = evaluate.latency(path, ctx.splits.x_test, threads, LATENCY_RUNS)
        step.note(f"accuracy {quality['accuracy']:.4f}, "
                  f"batch 1 p50 {timing['batch_1']['p50_ms']:.3f} ms")
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size,
            "parameters": evaluate.onnx_parameters(path), "macs": ctx.made[name].macs,
            "quality": quality, "latency": {"threads": threads, "cpu": cpu, **timing}}


def build(request: BuildRequest, progress: Progress) -> dict[str, Any]:
    """Run the whole build into a staging folder and swap it in; return the manifest written."""
    teacher_options, variant_options = _options(request)
    with staged_model_dir(request.out, request.name) as folder:
        with progress.step(f"data: {request.data} (seed {request.seed})") as step:
            splits = load_data(request.data, request.seed)
            calibration = calibration_sample(splits, variant_options.quantize.calibration_samples,
                                             request.seed)
            np.savez(folder / HELD_OUT, x=splits.x_test, y=splits.y_test)
            np.savez(folder / CALIBRATION, x=calibration)
            step.note(", ".join(f"{k} {v}" for k, v in splits.sizes().items()))

        began = time.monotonic()
        teacher = resolve_teacher(request.teacher).load(splits, teacher_options, progress)
        ctx = BuildContext(teacher, splits, calibration, variant_options, progress)
        seconds = _make_all(ctx, folder, request.variants, began)

        host = host_record()
        teacher_top1 = evaluate.predict(evaluate.session(ctx.files["teacher"]),
                                        splits.x_test).argmax(axis=1)
        variants = {}
        for name in request.variants:
            spec = VARIANTS[name]
            variants[name] = {
                "kind": spec.kind, "parent": spec.parent, "recipe": ctx.made[name].recipe,
                "file": f"{name}/model.onnx",
                **_measure(ctx, name, request.threads, teacher_top1, str(host["cpu"])),
                "build_seconds": round(seconds[name], 2)}

        manifest = {
            "schema_version": SCHEMA_VERSION, "name": request.name, "task": teacher.task,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "inputs": [s.to_json() for s in teacher.inputs],
            "outputs": [s.to_json() for s in teacher.outputs],
            **({"labels": teacher.labels} if teacher.labels else {}),
            "primary_metric": PRIMARY_METRIC[teacher.task], "default_variant": "teacher",
            "routing": {"policy": "fixed", "variant": "teacher"},
            "data": {"name": request.data, "seed": request.seed, "splits": splits.sizes(),
                     "heldout_file": HELD_OUT, "calibration_file": CALIBRATION},
            "host": host, "tools": tool_versions(), "variants": variants,
            "baselines": {k: v for made in ctx.made.values() for k, v in made.baselines.items()},
        }
        problems = validate(manifest)
        if problems:
            raise BuildError(f"manifest does not match schema: {'; '.join(problems)}")
        # Last file in the folder: a reader that finds a manifest finds everything it names.
        write_json_atomic(folder / "manifest.json", manifest)
    return manifest


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _interrupt(signum: int, frame: Any) -> NoReturn:
    # SIGTERM (e.g. from a job runner) gets Ctrl-C's clean-up: staging removed, repository intact.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    prog = "compression.build"
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        request = parse_args(argv)
        progress = Progress(quiet=request.args.quiet)
        manifest = build(request, progress)
        progress.line(f"done in {progress.elapsed():.1f}s")
        print(render_table(manifest))
        print(request.out / request.name / "manifest.json")
        return 0
    except BuildError as error:
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the repository was left as it was", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:  # anything unforeseen: still one line, still exit 1
        print(f"{prog}: error: build failed: {type(error).__name__}: {_one_line(error)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    status = main()
    if status == INTERRUPTED:
        # CPython kills itself with SIGINT at exit if a KeyboardInterrupt ever escaped an exec() of
        # source text (a dataclass being defined in a lazy import, say), even one caught later;
        # leave directly so the status is the documented 130 either way.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
