"""`python -m compression.build`: load or train a teacher, make its variants, write a model folder.

Flags: `compression.cli` (`--help`). Exit status 0 on success, 2 on bad usage, 1 when the build
fails, 130 when interrupted; the reason is one line on stderr and the repository is left as it was.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NoReturn

import numpy as np

from compression import distributed, evaluate
from compression.cli import DEFAULT_VARIANTS, BuildRequest, make_parser, options, parse_args
from compression.data import Splits, calibration_sample, describe_data, load_data
from compression.errors import BuildError, UsageError
from compression.host import host_record, tool_versions
from compression.manifest import SCHEMA_VERSION, sha256_file, validate, write_json_atomic
from compression.progress import Progress
from compression.report import render_table, write_report
from compression.repository import staged_model_dir
from compression.teachers import Teacher, load_builtins
from compression.variants import VARIANTS, BuildContext

__all__ = ["DEFAULT_VARIANTS", "BuildRequest", "build", "main", "make_parser", "parse_args"]

HELD_OUT = "heldout.npz"
CALIBRATION = "calibration.npz"
LATENCY_RUNS = {1: 200, 32: 100}
INTERRUPTED = 130  # exit status after Ctrl-C or SIGTERM, as shells report a SIGINT death


def primary_metric(teacher: Teacher, splits: Splits) -> str:
    if teacher.task == "classification":
        return "accuracy" if splits.labelled else "agreement"
    return "cosine_mean"


def _conform(splits: Splits, teacher: Teacher) -> Splits:
    """Integer rows for a float input are cast once, here, so every consumer sees FP32."""
    if teacher.inputs[0].datatype == "FP32" and splits.x_train.dtype != np.float32:
        cast = (lambda a: a.astype(np.float32))
        return replace(splits, x_train=cast(splits.x_train), x_val=cast(splits.x_val),
                       x_test=cast(splits.x_test))
    return splits


@contextmanager
def _folder(request: BuildRequest) -> Iterator[Path]:
    """Rank 0 builds into the repository's staging folder; other ranks into a scratch folder."""
    if distributed.is_main():
        with staged_model_dir(request.out, request.name) as folder:
            yield folder
    else:
        with tempfile.TemporaryDirectory(prefix="slimserve-rank-") as scratch:
            yield Path(scratch)


def _save_heldout(folder: Path, splits: Splits) -> None:
    held = {"x": splits.x_test, **({"y": splits.y_test} if splits.labelled else {})}
    np.savez(folder / HELD_OUT, **held)


def _make_all(ctx: BuildContext, folder: Path, names: list[str], began: float) -> dict[str, float]:
    """Run each variant's maker in order; return seconds spent per variant, the first counted
    from `began` (so the teacher's figure includes its training). Ranks other than 0 only run
    the training steps."""
    seconds: dict[str, float] = {}
    for name in names:
        spec = VARIANTS[name]
        if not ctx.main and not (spec.trains or name == "teacher"):
            continue
        path = folder / name / "model.onnx"
        with ctx.progress.step(f"{name}: written {path.relative_to(folder)}"):
            ctx.made[name] = spec.make(ctx, spec, path)
            ctx.files[name] = path
        # Unserved baselines trained alongside a variant do not count toward its build time.
        aside = sum(b.get("build_seconds", 0.0) for b in ctx.made[name].baselines.values())
        seconds[name] = time.monotonic() - began - aside
        began = time.monotonic()
    return seconds


def _measure(ctx: BuildContext, name: str, threads: int, teacher_out: np.ndarray,
             cpu: str) -> dict[str, Any]:
    """The manifest figures of one variant, measured on its ONNX file with ONNX Runtime."""
    path = ctx.files[name]
    metric = primary_metric(ctx.teacher, ctx.splits)
    with ctx.progress.step(f"{name}: evaluate and time (threads {threads})") as step:
        out = evaluate.run(evaluate.session(path), ctx.splits.x_test)
        quality = evaluate.quality(ctx.teacher.task, out, ctx.splits.y_test, teacher_out)
        timing = evaluate.latency(path, ctx.splits.x_test, threads, LATENCY_RUNS)
        step.note(f"{metric} {quality[metric]:.4f}, batch 1 p50 {timing['batch_1']['p50_ms']:.3f} ms")
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size,
            "parameters": evaluate.onnx_parameters(path), "macs": ctx.made[name].macs,
            "quality": quality, "latency": {"threads": threads, "cpu": cpu, **timing}}


def _latency_summary(variant: dict[str, Any]) -> dict[str, float]:
    lat = variant["latency"]
    return {"batch_1_p50_ms": lat["batch_1"]["p50_ms"], "batch_32_p50_ms": lat["batch_32"]["p50_ms"]}


def build(request: BuildRequest, progress: Progress) -> dict[str, Any] | None:
    """Run the whole build into a staging folder and swap it in; return the manifest written
    (None on torchrun ranks other than 0, which only train)."""
    teacher_options, variant_options = options(request)
    with _folder(request) as folder:
        main = distributed.is_main()
        with progress.step(f"data: {request.data} (seed {request.seed})") as step:
            splits = load_data(request.data, request.seed)
            if main:
                _save_heldout(folder, splits)
            step.note(", ".join(f"{k} {v}" for k, v in splits.sizes().items())
                      + ("" if splits.labelled else ", no labels"))
        began = time.monotonic()
        if request.source.load is None:
            raise UsageError(f"teacher {request.teacher} has no loader in this build")
        teacher = request.source.load(splits, teacher_options, progress)
        conformed = _conform(splits, teacher)
        if main and conformed is not splits:
            _save_heldout(folder, conformed)  # as the served model takes it
        splits = conformed
        calibration = calibration_sample(splits, variant_options.quantize.calibration_samples,
                                         request.seed)
        if main:
            np.savez(folder / CALIBRATION, x=calibration)
        host = host_record()
        ctx = BuildContext(teacher, splits, calibration, variant_options, progress, host)
        seconds = _make_all(ctx, folder, request.variants, began)
        if not distributed.is_main():
            return None

        teacher_out = evaluate.run(evaluate.session(ctx.files["teacher"]), splits.x_test)
        variants: dict[str, dict[str, Any]] = {}
        for name in request.variants:
            spec = VARIANTS[name]
            variants[name] = {
                "kind": spec.kind, "parent": spec.parent, "recipe": ctx.made[name].recipe,
                "file": f"{name}/model.onnx",
                **_measure(ctx, name, request.threads, teacher_out, str(host["cpu"])),
                "build_seconds": round(seconds[name], 2)}
        for variant in variants.values():
            if variant["kind"] == "pruned":  # the recipe promises latency before and after
                variant["recipe"]["params"]["latency_before"] = _latency_summary(variants[variant["parent"]])
                variant["recipe"]["params"]["latency_after"] = _latency_summary(variant)

        baselines = {k: v for made in ctx.made.values() for k, v in made.baselines.items()}
        for baseline in baselines.values():
            # Same architecture as that variant: count its parameters the same way (ONNX file,
            # where batch norms are folded), so the rows compare.
            twin = variants.get(baseline.get("architecture_of", ""))
            if twin is not None:
                baseline["parameters"] = twin["parameters"]
        metric = primary_metric(teacher, splits)
        manifest = {
            "schema_version": SCHEMA_VERSION, "name": request.name, "task": teacher.task,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "inputs": [s.to_json() for s in teacher.inputs],
            "outputs": [s.to_json() for s in teacher.outputs],
            **({"labels": teacher.labels} if teacher.labels else {}),
            "primary_metric": metric, "default_variant": "teacher",
            "routing": {"policy": "fixed", "variant": "teacher"},
            "data": {"name": request.data, "source": describe_data(request.data),
                     "seed": request.seed, "splits": splits.sizes(), "labelled": splits.labelled,
                     "stratified": splits.stratified,
                     "heldout_file": HELD_OUT, "calibration_file": CALIBRATION},
            "host": host, "tools": tool_versions(), "variants": variants,
            "baselines": baselines,
        }
        problems = validate(manifest)
        if problems:
            raise BuildError(f"manifest does not match schema: {'; '.join(problems)}")
        with progress.step("report: report.md and chart.png") as step:
            step.note(", ".join(write_report(manifest, folder)))
        # Last file in the folder: a reader that finds a manifest finds everything it names.
        write_json_atomic(folder / "manifest.json", manifest)
    return manifest


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _interrupt(signum: int, frame: Any) -> NoReturn:
    # SIGTERM (e.g. from a job runner) gets Ctrl-C's clean-up: staging removed, repository intact.
    raise KeyboardInterrupt


def _delegate(argv: list[str]) -> int | None:
    """A built-in teacher with its own pipeline (TeacherSource.delegate) takes the command line."""
    for i, arg in enumerate(argv):
        name = argv[i + 1] if arg == "--teacher" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--teacher=") else None)
        source = load_builtins().get(name) if name else None
        if source is not None and source.delegate is not None:
            rest = argv[:i] + argv[i + (1 if "=" in arg else 2):]
            return source.delegate(rest)
    return None


def main(argv: list[str] | None = None) -> int:
    prog = "compression.build"
    signal.signal(signal.SIGTERM, _interrupt)
    # Copying fx graphs trips a torch-internal deprecation note; it says nothing about the build.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
    argv = sys.argv[1:] if argv is None else argv
    try:
        delegated = _delegate(argv)
        if delegated is not None:
            return delegated
        distributed.start()
        request = parse_args(argv)
        progress = Progress(quiet=request.args.quiet or not distributed.is_main())
        manifest = build(request, progress)
        if manifest is not None:
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
    finally:
        distributed.finish()


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
