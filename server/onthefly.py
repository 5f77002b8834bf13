"""An on-the-fly variant job (int8 from a served variant, no training), run as a child process.

`python -m server.onthefly --model-folder F --parent teacher --name int8-dyn --recipe int8_dynamic
--out STAGING` quantizes with ONNX Runtime, evaluates the result on the model's held-out set against
the parent's teacher, and prints the variant's manifest entry as JSON on the last line of stdout.
A separate process keeps the quantizer's CPU and GIL use off the serving threads, and a crash here
cannot take the server down.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from server.session_options import open_session
from server.shadow import agreement

__all__ = ["RECIPES", "main"]

RECIPES = ("int8_static", "int8_dynamic")


def _step(message: str) -> None:
    print(f"step: {message}", flush=True)


def _feeds_from_npz(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    data = np.load(path, allow_pickle=False)
    if len(input_names) == 1 and "x" in data.files:
        return {input_names[0]: data["x"]}
    missing = [n for n in input_names if n not in data.files]
    if missing:
        raise ValueError(f"{path.name} has no arrays for inputs {missing}")
    return {n: data[n] for n in input_names}


class _Reader(CalibrationDataReader):
    """Feeds calibration rows in small batches."""

    def __init__(self, feeds: dict[str, np.ndarray], samples: int, batch: int = 16) -> None:
        rows = min(samples, next(iter(feeds.values())).shape[0])
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{k: v[i : i + batch] for k, v in feeds.items()} for i in range(0, rows, batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _run_all(session: ort.InferenceSession, feeds: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    rows = next(iter(feeds.values())).shape[0]
    parts = [session.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[0] for i in range(0, rows, batch)]
    return np.concatenate(parts)


def _latency(session: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int = 200) -> dict[str, float]:
    one = {k: v[:1] for k, v in feeds.items()}
    for _ in range(10):
        session.run(None, one)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, one)
        times.append((time.perf_counter() - started) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)), "runs": runs}


def make_variant(folder: Path, parent: str, name: str, recipe: str, params: dict[str, str], out: Path) -> dict[str, Any]:
    manifest = json.loads((folder / "manifest.json").read_text())
    variants = manifest["variants"]
    if parent not in variants:
        raise ValueError(f"parent {parent!r} is not a variant; choose from {sorted(variants)}")
    source = folder / variants[parent]["file"]
    input_names = [t["name"] for t in manifest["inputs"]]
    per_channel = params.get("per_channel", "true").lower() in ("1", "true", "yes")
    out.mkdir(parents=True, exist_ok=True)
    target = out / "model.onnx"
    started = time.perf_counter()
    recipe_params: dict[str, Any] = {"per_channel": per_channel}
    if recipe == "int8_static":
        calibration = folder / manifest.get("data", {}).get("calibration_file", "calibration.npz")
        if not calibration.is_file():
            raise ValueError(f"{calibration.name} is missing from the model folder; use recipe int8_dynamic")
        samples = int(params.get("calibration_samples", "256"))
        method = params.get("method", "minmax").lower()
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        if method not in methods:
            raise ValueError(f"method={method!r}: use minmax, entropy or percentile")
        _step(f"calibrating on {samples} samples ({method})")
        quantize_static(
            str(source), str(target), _Reader(_feeds_from_npz(calibration, input_names), samples),
            quant_format=QuantFormat.QDQ, per_channel=per_channel, weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8, calibrate_method=methods[method],
        )
        recipe_params.update({"calibration_samples": samples, "method": method, "format": "QDQ"})
    elif recipe == "int8_dynamic":
        _step("quantizing weights (dynamic activations)")
        quantize_dynamic(str(source), str(target), per_channel=per_channel, weight_type=QuantType.QInt8)
    else:
        raise ValueError(f"recipe {recipe!r}: use one of {', '.join(RECIPES)}")

    _step("evaluating on the held-out set")
    heldout_path = folder / manifest.get("data", {}).get("heldout_file", "heldout.npz")
    feeds = _feeds_from_npz(heldout_path, input_names)
    teacher_file = folder / variants["teacher"]["file"] if "teacher" in variants else source
    new_out = _run_all(open_session(target), feeds)
    teacher_out = _run_all(open_session(teacher_file), feeds)
    total, rows = agreement(manifest.get("task", "classification"), new_out, teacher_out)
    quality: dict[str, float] = {}
    if manifest.get("task", "classification") == "classification":
        quality["agreement"] = total / rows
        labels = np.load(heldout_path, allow_pickle=False)
        if "y" in labels.files:
            quality["accuracy"] = float(np.mean(new_out.argmax(axis=1) == labels["y"]))
    else:
        quality["cosine_mean"] = total / rows
    _step("measuring latency")
    latency = {"threads": 1, "cpu": platform.processor() or platform.machine(),
               "batch_1": _latency(open_session(target), feeds)}
    data = target.read_bytes()
    parameters = variants[parent].get("parameters", 0)
    return {
        "kind": f"{variants[parent].get('kind', parent)}+int8" if parent != "teacher" else "int8",
        "parent": parent,
        "recipe": {"name": recipe, "params": recipe_params, "made": "on the fly by the server"},
        "file": f"{name}/model.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "parameters": parameters,
        "macs": variants[parent].get("macs"),
        "quality": quality,
        "latency": latency,
        "build_seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.onthefly", description=__doc__)
    parser.add_argument("--model-folder", type=Path, required=True)
    parser.add_argument("--parent", default="teacher")
    parser.add_argument("--name", required=True)
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--params", default="{}", help="JSON object of string parameters")
    parser.add_argument("--out", type=Path, required=True, help="staging folder for model.onnx")
    args = parser.parse_args(argv)
    try:
        entry = make_variant(args.model_folder, args.parent, args.name, args.recipe, json.loads(args.params), args.out)
    except Exception as exc:  # reported to the job as one line; the server stays up either way
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", flush=True)
        return 1
    print("result: " + json.dumps(entry), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
