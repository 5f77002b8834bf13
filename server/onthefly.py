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

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelrepo.arrays import read_feeds
from modelrepo.entry import variant_entry
from modelrepo.files import read_manifest
from modelrepo.host import cpu_flags, cpu_model
from modelrepo.int8 import budget_for, resolved_reduce_range, search
from modelrepo.latency import cases, default_runs, measure_latency
from modelrepo.measure import count, quality, run, take
from modelrepo.onthefly import RECIPES, exit_with_parent, quantize_options
from modelrepo.session import open_session

__all__ = ["RECIPES", "main", "make_variant"]


def _step(message: str) -> None:
    print(f"step: {message}", flush=True)


def make_variant(folder: Path, parent: str, name: str, recipe: str, params: dict[str, str], out: Path) -> dict[str, Any]:
    """Write `out/model.onnx` and return its manifest entry (file relative to the model folder as `name/`)."""
    manifest = read_manifest(folder)
    variants = manifest["variants"]
    if parent not in variants:
        raise ValueError(f"parent {parent!r} is not a variant; choose from {sorted(variants)}")
    task = manifest.get("task", "classification")
    data = manifest.get("data") or {}
    source = folder / variants[parent]["file"]
    input_names = [t["name"] for t in manifest["inputs"]]
    heldout, labels = read_feeds(folder / data.get("heldout_file", "heldout.npz"), input_names)
    token_model = "tokenizer" in manifest
    options = quantize_options(recipe, params, token_model)
    calibration = None
    if options.mode == "static":
        calibration_file = folder / data.get("calibration_file", "calibration.npz")
        if not calibration_file.is_file():
            raise ValueError(f"{calibration_file.name} is missing from the model folder; use recipe int8_dynamic")
        rows, _ = read_feeds(calibration_file, input_names)
        calibration = take(rows, slice(0, options.calibration_samples))
    out.mkdir(parents=True, exist_ok=True)
    target = out / "model.onnx"
    started = time.perf_counter()
    # The budget is checked on half of the held-out rows; quality is reported on all of them, as
    # the build reports it (no validation split travels with the repository).
    check = take(heldout, slice(0, max(1, count(heldout) // 2)))
    reference = run(open_session(source), check)
    check_labels = None if labels is None else labels[:count(check)]
    budget = budget_for(task, reference, check_labels, options)
    reduce_range = resolved_reduce_range(options, cpu_flags())
    _step(f"quantizing {parent} ({options.mode})")
    result = search(source, target, calibration, check, reference, budget, options, reduce_range, _step)

    _step("evaluating on the held-out set")
    teacher_file = folder / variants["teacher"]["file"] if "teacher" in variants else source
    teacher_out = run(open_session(teacher_file), heldout)
    measured = quality(task, run(open_session(target), heldout), labels, teacher_out)
    _step("measuring latency")
    max_tokens = (manifest.get("tokenizer") or {}).get("max_length")
    latency = measure_latency({name: target}, cases(heldout, max_tokens), default_runs(token_model),
                              cpu=cpu_model())[name]
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
    parser = argparse.ArgumentParser(prog="python -m server.onthefly", description=__doc__)
    parser.add_argument("--model-folder", type=Path, required=True)
    parser.add_argument("--parent", default="teacher")
    parser.add_argument("--name", required=True)
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--params", default="{}", help="JSON object of string parameters")
    parser.add_argument("--out", type=Path, required=True, help="staging folder for model.onnx")
    parser.add_argument("--server-pid", type=int, default=0, help="exit when this parent process dies")
    args = parser.parse_args(argv)
    if args.server_pid:
        exit_with_parent(args.server_pid)
    _step("started")  # the server's sign that this process ran (before it writes anything)
    np.seterr(all="ignore")
    try:
        entry = make_variant(args.model_folder, args.parent, args.name, args.recipe, json.loads(args.params), args.out)
    except Exception as exc:  # reported to the job as one line; the server stays up either way
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", flush=True)
        return 1
    print("result: " + json.dumps(entry), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
