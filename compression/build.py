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

from compression import distributed
from compression.cli import DEFAULT_VARIANTS, BuildRequest, make_parser, options, parse_args
from compression.data import Splits, calibration_sample, describe_data, load_data
from compression.errors import BuildError, UsageError
from compression.progress import Progress
from compression.report import render_table, write_report
from compression.teachers import Teacher
from compression.variants import VARIANTS, BuildContext
from modelrepo import ManifestError
from modelrepo.arrays import write_feeds
from modelrepo.entry import variant_entry
from modelrepo.files import staged_model_dir, write_manifest
from modelrepo.host import host_record, tool_versions
from modelrepo.latency import cases, default_runs, measure_latency
from modelrepo.measure import is_token_feeds, quality, run
from modelrepo.onnxinfo import onnx_parameters
from modelrepo.schema import SCHEMA_VERSION
from modelrepo.session import open_session

__all__ = ["DEFAULT_VARIANTS", "BuildRequest", "build", "main", "make_parser", "parse_args"]

HELD_OUT = "heldout.npz"
CALIBRATION = "calibration.npz"
INTERRUPTED = 130  # exit status after Ctrl-C or SIGTERM, as shells report a SIGINT death


def primary_metric(teacher: Teacher, splits: Splits) -> str:
    if teacher.task == "classification":
        return "accuracy" if splits.labelled else "agreement"
    return "cosine_mean"


def _conform(splits: Splits, teacher: Teacher) -> Splits:
    """Integer rows for a float input are cast once, here, so every consumer sees FP32."""
    floats = {spec.name for spec in teacher.inputs if spec.datatype == "FP32"}
    if not any(splits.x_train[n].dtype != np.float32 for n in floats if n in splits.x_train):
        return splits

    def cast(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) if k in floats else v for k, v in x.items()}
    return replace(splits, x_train=cast(splits.x_train), x_val=cast(splits.x_val),
                   x_test=cast(splits.x_test))


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
    write_feeds(folder / HELD_OUT, splits.x_test, splits.y_test)


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
        make = ctx.teacher.makers.get(name, spec.make)  # a teacher family's own maker, if any
        with ctx.progress.step(f"{name}: written {path.relative_to(folder)}"):
            ctx.made[name] = make(ctx, spec, path)
            ctx.files[name] = path
        # Unserved baselines trained alongside a variant do not count toward its build time.
        aside = sum(b.get("build_seconds", 0.0) for b in ctx.made[name].baselines.values())
        seconds[name] = time.monotonic() - began - aside
        began = time.monotonic()
    return seconds


def _measure(ctx: BuildContext, name: str, teacher_out: np.ndarray) -> dict[str, Any]:
    """The manifest figures of one variant, measured on its ONNX file with ONNX Runtime."""
    path = ctx.files[name]
    metric = primary_metric(ctx.teacher, ctx.splits)
    with ctx.progress.step(f"{name}: evaluate on the held-out split") as step:
        out = run(open_session(path), ctx.splits.x_test)
        measured = quality(ctx.teacher.task, out, ctx.splits.y_test, teacher_out)
        step.note(f"{metric} {measured[metric]:.4f}")
    return {"parameters": onnx_parameters(path), "macs": ctx.made[name].macs, "quality": measured}


def _latencies(ctx: BuildContext, names: list[str], request: BuildRequest, cpu: str) -> dict[str, Any]:
    """Latency of every variant per case, variants interleaved run by run (modelrepo.latency)."""
    token_model = is_token_feeds(ctx.splits.x_test)
    runs = default_runs(token_model)
    if request.args.latency_runs is not None:
        runs = {**runs, **dict(zip(runs, request.args.latency_runs, strict=False))}
    with ctx.progress.step(f"latency: {', '.join(runs)} (threads {request.threads}, variants "
                           "interleaved)") as step:
        max_tokens = ctx.teacher.manifest_extra.get("tokenizer", {}).get("max_length")
        timings = measure_latency({n: ctx.files[n] for n in names}, cases(ctx.splits.x_test, max_tokens),
                                  runs, request.threads, cpu)
        step.note(", ".join(f"{n} {timings[n]['batch_1']['p50_ms']:.3f} ms" for n in names))
    return timings


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
            splits = (request.source.load_data or load_data)(request.data, request.seed)
            if main:  # rewritten below once the teacher has named and typed the inputs
                _save_heldout(folder, splits)
            step.note(", ".join(f"{k} {v}" for k, v in splits.sizes().items())
                      + ("" if splits.labelled else ", no labels"))
        began = time.monotonic()
        if request.source.load is None:
            raise UsageError(f"teacher {request.teacher} has no loader in this build")
        teacher, splits = request.source.load(splits, teacher_options, progress)
        splits = _conform(splits, teacher)
        calibration = calibration_sample(splits, variant_options.quantize.calibration_samples,
                                         request.seed)
        if main:
            _save_heldout(folder, splits)  # named and typed as the served model takes them
            write_feeds(folder / CALIBRATION, calibration)
            if teacher.write_files is not None:
                teacher.write_files(folder)
        host = host_record()
        ctx = BuildContext(teacher, splits, calibration, variant_options, progress, host)
        seconds = _make_all(ctx, folder, request.variants, began)
        if not distributed.is_main():
            return None

        teacher_out = run(open_session(ctx.files["teacher"]), splits.x_test)
        timings = _latencies(ctx, request.variants, request, str(host["cpu"]))
        variants: dict[str, dict[str, Any]] = {}
        for name in request.variants:
            spec = VARIANTS[name]
            variants[name] = variant_entry(
                folder, ctx.files[name], spec.kind, spec.parent, ctx.made[name].recipe,
                latency=timings[name], build_seconds=seconds[name], **_measure(ctx, name, teacher_out),
                **teacher.entry_extra)
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
            **teacher.manifest_extra,
            "primary_metric": metric, "default_variant": "teacher",
            "routing": {"policy": "fixed", "variant": "teacher"},
            "data": {"name": request.data, "source": describe_data(request.data),
                     "seed": request.seed, "splits": splits.sizes(), "labelled": splits.labelled,
                     "stratified": splits.stratified,
                     "heldout_file": HELD_OUT, "calibration_file": CALIBRATION,
                     "calibration_rows": len(next(iter(calibration.values()))), **teacher.data_extra},
            "host": host, "tools": tool_versions("torch", "torch-pruning", *teacher.tools),
            "variants": variants,
            "baselines": baselines,
        }
        with progress.step("report: report.md and chart.png") as step:
            step.note(", ".join(write_report(manifest, folder)))
        # Last file in the folder: a reader that finds a manifest finds everything it names.
        try:
            write_manifest(folder, manifest)
        except ManifestError as error:
            raise BuildError(str(error)) from error
    return manifest


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _interrupt(signum: int, frame: Any) -> NoReturn:
    # SIGTERM (e.g. from a job runner) gets Ctrl-C's clean-up: staging removed, repository intact.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    prog = "compression.build"
    # SIGINT too: Python keeps an inherited "ignore" (shells start background jobs that way, and so do
    # some CI runners), which would leave Ctrl-C or `kill -INT` without effect until the build ends.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    # Copying fx graphs trips a torch-internal deprecation note; it says nothing about the build.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
    argv = sys.argv[1:] if argv is None else argv
    try:
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
