"""An on-the-fly variant job (int8 from a served variant, no training), run as a child process.

`python -m server.onthefly --model-folder F --parent teacher --name int8-dyn --recipe int8_dynamic
--out STAGING` runs the repository format's int8 step (`modelrepo.int8`, accuracy-aware, the same
code the offline build runs) on the parent's file, measures the result as the build does
(`modelrepo.measure`, `modelrepo.latency`) and prints the variant's manifest entry as JSON on the
last line of stdout; the server validates the manifest with the entry before it writes it. A
separate process keeps the quantizer's CPU and GIL use off the serving threads, and a crash here
cannot take the server down.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from modelrepo.arrays import read_feeds
from modelrepo.entry import variant_entry
from modelrepo.host import cpu_flags
from modelrepo.int8 import budget_for, resolved_reduce_range, search
from modelrepo.measure import count, run, take
from modelrepo.onthefly import RECIPES, child_parser, measure_result, quantize_options, read_job_folder, run_child, step
from modelrepo.session import open_session

__all__ = ["RECIPES", "main", "make_variant"]


def make_variant(folder: Path, parent: str, name: str, recipe: str, params: dict[str, str], out: Path) -> dict[str, Any]:
    """Write `out/model.onnx` and return its manifest entry (file relative to the model folder as `name/`)."""
    job = read_job_folder(folder, parent)
    variants = job.variants
    options = quantize_options(recipe, params, job.token_model)
    calibration = None
    if options.mode == "static":
        calibration_file = folder / job.data.get("calibration_file", "calibration.npz")
        if not calibration_file.is_file():
            raise ValueError(f"{calibration_file.name} is missing from the model folder; use recipe int8_dynamic")
        rows, _ = read_feeds(calibration_file, job.input_names)
        calibration = take(rows, slice(0, options.calibration_samples))
    out.mkdir(parents=True, exist_ok=True)
    target = out / "model.onnx"
    started = time.perf_counter()
    # The budget is checked on half of the held-out rows; quality is reported on all of them, as
    # the build reports it (no validation split travels with the repository).
    check = take(job.heldout, slice(0, max(1, count(job.heldout) // 2)))
    reference = run(open_session(job.source), check)
    check_labels = None if job.labels is None else job.labels[:count(check)]
    budget = budget_for(job.task, reference, check_labels, options)
    reduce_range = resolved_reduce_range(options, cpu_flags())
    step(f"quantizing {parent} ({options.mode})")
    result = search(job.source, target, calibration, check, reference, budget, options, reduce_range, step)

    measured, latency = measure_result(folder, job, target, name, lambda stage, _percent: step(stage))
    recipe_params = {"source": parent, **options.as_params(), "reduce_range": reduce_range,
                     "budget": budget.as_params(), "budget_met": result.met, "fp32_nodes": result.fp32_nodes,
                     "attempts": result.attempts}
    kind = "int8" if parent == "teacher" else f"{variants[parent].get('kind', parent)}+int8"
    entry = variant_entry(out.parent, target, kind, parent,
                          {"name": "quantize_" + options.mode, "params": recipe_params,
                           "made": "on the fly by the server"},
                          variants[parent].get("parameters", 0), variants[parent].get("macs"), measured,
                          latency, time.perf_counter() - started)
    entry["file"] = f"{name}/model.onnx"  # where the server moves the staging folder
    return entry


def main(argv: list[str] | None = None) -> int:
    args = child_parser("python -m server.onthefly", __doc__, "the int8 recipe", RECIPES).parse_args(argv)
    return run_child(args, lambda params: make_variant(args.model_folder, args.parent, args.name, args.recipe,
                                                       params, args.out),
                     lambda exc: str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


if __name__ == "__main__":
    sys.exit(main())
