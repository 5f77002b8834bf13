"""int8 quantization of an ONNX file with ONNX Runtime, path in, path out, within a quality budget.

Static mode writes QDQ (activation ranges calibrated on training rows: minmax, entropy or
percentile); dynamic mode quantizes weights and computes activation scales per batch at run time.
Weights are int8, per output channel by default.

Accuracy-aware (`search`): the first result is checked against the budget on the validation split
with ONNX Runtime on this CPU. If it misses, every weighted node (MatMul, Gemm, Conv, ...) is
quantized alone and its output error against the fp32 parent measured; the most sensitive nodes
then go back to fp32 (`nodes_to_exclude`), one at a time, until the budget holds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from compression import evaluate
from compression.progress import Progress

__all__ = ["ACTIVATION_TYPES", "CALIBRATION_METHODS", "MODES", "ArrayDataReader", "Budget",
           "QuantizeOptions", "SearchResult", "quantize_int8", "search", "weighted_nodes"]

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
MODES = ("static", "dynamic")
# Nodes that carry weights: where quantization error comes from, and what may stay fp32.
WEIGHTED_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "LSTM", "GRU",
                "EmbedLayerNormalization", "Gather"}
# CPU features with fast u8×s8 dot products; without them ORT advises reduce_range on x86.
FAST_INT8 = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}


@dataclass(frozen=True)
class QuantizeOptions:
    mode: str = "static"
    calibration_samples: int = 256
    calibration_method: str = "minmax"
    per_channel: bool = True
    """One scale per output channel of each weight: better fidelity for a few extra floats."""
    activation_type: str = "uint8"
    """u8 activations × s8 weights is the pairing ORT's x86 kernels (VNNI) are built for."""
    reduce_range: bool | None = None
    """7-bit weights, for x86 CPUs without VNNI where u8×s8 products can saturate (None: auto)."""
    preprocess: bool = True
    """Run ORT's quant_pre_process (graph optimisation + shape inference) first."""
    batch_size: int = 32
    max_drop: float = 1.0
    """Budget with labels: at most this many accuracy points below the parent (validation)."""
    min_fidelity: float = 0.99
    """Budget without labels: top-1 agreement (classifiers) or cosine_mean with the parent."""
    accuracy_aware: bool = True
    """Keep the most sensitive nodes in fp32 until the budget holds."""

    def resolved_reduce_range(self, cpu_flags: set[str]) -> bool:
        if self.reduce_range is not None:
            return self.reduce_range
        x86 = "avx2" in cpu_flags or "sse4_1" in cpu_flags
        return x86 and not (FAST_INT8 & cpu_flags)

    def as_params(self) -> dict[str, object]:
        common = {"weight_type": "int8", "per_channel": self.per_channel,
                  "preprocess": self.preprocess}
        if self.mode == "dynamic":
            return {"tool": "onnxruntime.quantization.quantize_dynamic", "mode": "dynamic",
                    "format": "QOperator (MatMulInteger / ConvInteger)",
                    "activations": "quantized at run time, per batch", **common}
        return {"tool": "onnxruntime.quantization.quantize_static", "mode": "static", "format": "QDQ",
                "activation_type": self.activation_type, **common,
                "calibration_method": self.calibration_method,
                "calibration_samples": self.calibration_samples, "calibration_split": "train"}


class ArrayDataReader(CalibrationDataReader):
    """Feeds calibration rows to the quantizer in batches under one input name."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{input_name: x[i:i + batch_size]}
                              for i in range(0, len(x), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@contextlib.contextmanager
def _quiet() -> Any:
    """The quantizer prints (histogram calibrators) and logs warnings per node; the build's
    output is its own progress lines and final table."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_int8(source: Path, target: Path, input_name: str, calibration: np.ndarray,
                  options: QuantizeOptions, exclude: list[str] | None = None,
                  only: list[str] | None = None, cache: Path | None = None,
                  reduce_range: bool = False) -> Path:
    """Quantize `source` (already pre-processed when wanted) into `target`.

    `exclude` nodes stay fp32; `only`, when given, limits quantization to those nodes. `cache`
    (static mode) is a calibration-range file: written on the first call, reused after.
    """
    if options.calibration_method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {options.calibration_method!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        if options.mode == "dynamic":
            quantize_dynamic(str(source), str(target), per_channel=options.per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8,
                             nodes_to_quantize=only, nodes_to_exclude=exclude or [])
        else:
            quantize_static(
                str(source), str(target),
                ArrayDataReader(input_name, calibration, options.batch_size),
                quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                reduce_range=reduce_range, weight_type=QuantType.QInt8,
                activation_type=ACTIVATION_TYPES[options.activation_type],
                calibrate_method=CALIBRATION_METHODS[options.calibration_method],
                nodes_to_quantize=only, nodes_to_exclude=exclude or [],
                calibration_cache_path=cache)
    return target


def weighted_nodes(path: Path) -> list[str]:
    """Names of nodes that multiply by a stored weight, in graph order."""
    return list(_node_weights(path))


def _node_weights(path: Path) -> dict[str, str]:
    """Weighted node name -> its (first) stored weight, so records name the layer too."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return {n.name: next(i for i in n.input if i in inits) for n in model.graph.node
            if n.op_type in WEIGHTED_OPS and n.name and any(i in inits for i in n.input)}


@dataclass(frozen=True)
class Budget:
    """What "good enough" means for an int8 child, measured on the validation split."""

    metric: str
    """accuracy (with labels), agreement or cosine_mean (against the parent, without)."""
    parent_value: float
    max_drop_points: float | None = None
    min_value: float | None = None
    score: Callable[[np.ndarray], float] = field(default=lambda out: 0.0, repr=False)
    """The metric of a candidate's validation outputs."""

    def holds(self, value: float) -> bool:
        if self.max_drop_points is not None:
            return 100.0 * (self.parent_value - value) <= self.max_drop_points + 1e-9
        return value >= (self.min_value or 0.0) - 1e-12

    def as_params(self) -> dict[str, object]:
        limit = ({"max_drop_points": self.max_drop_points} if self.max_drop_points is not None
                 else {"min_value": self.min_value})
        return {"metric": self.metric, **limit, "split": "validation",
                "parent_value": round(self.parent_value, 6)}


@dataclass
class SearchResult:
    fp32_nodes: list[str]
    value: float
    met: bool
    attempts: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    quantized_nodes: int


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    out, ref = out.reshape(len(out), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))


def search(source: Path, target: Path, input_name: str, calibration: np.ndarray,
           x_check: np.ndarray, reference: np.ndarray, budget: Budget, options: QuantizeOptions,
           reduce_range: bool, progress: Progress, desc: str) -> SearchResult:
    """Quantize `source` into `target`, keeping nodes in fp32 until `budget` holds on `x_check`
    (outputs compared with `reference`, the fp32 parent's outputs on the same rows)."""
    with tempfile.TemporaryDirectory(prefix="slimserve-quant-") as scratch_dir:
        scratch = Path(scratch_dir)
        # The pre-processed copy is scratch: only the quantized file belongs in the repository.
        model_in = source
        if options.preprocess:
            model_in = scratch / "preprocessed.onnx"
            with _quiet():
                quant_pre_process(str(source), str(model_in), skip_symbolic_shape=False)
        cache = scratch / "calibration.json" if options.mode == "static" else None
        weights = _node_weights(model_in)
        candidates = list(weights)

        def attempt(path: Path, exclude: list[str] | None = None,
                    only: list[str] | None = None) -> np.ndarray:
            quantize_int8(model_in, path, input_name, calibration, options, exclude, only, cache,
                          reduce_range)
            return evaluate.run(evaluate.session(path), x_check)

        out = attempt(target)
        value = budget.score(out)
        attempts = [{"fp32_nodes": [], "value": round(value, 6), "met": budget.holds(value)}]
        excluded: list[str] = []
        ranking: list[dict[str, Any]] = []
        if not budget.holds(value) and options.accuracy_aware and candidates:
            with progress.step(f"{desc}: budget missed ({budget.metric} {value:.4f}); "
                               f"sensitivity of {len(candidates)} nodes") as step:
                for name in candidates:
                    alone = attempt(scratch / "single.onnx", only=[name])
                    ranking.append({"node": name, "weight": weights[name],
                                    "relative_error": round(_relative_error(alone, reference), 6),
                                    "value": round(budget.score(alone), 6)})
                ranking.sort(key=lambda r: -r["relative_error"])
                step.note(", ".join(f"{r['node']} ({r['weight']}) {r['relative_error']:.4f}"
                                    for r in ranking[:5]))
            for entry in ranking:
                excluded.append(entry["node"])
                out = attempt(target, exclude=list(excluded))
                value = budget.score(out)
                attempts.append({"fp32_nodes": list(excluded), "value": round(value, 6),
                                 "met": budget.holds(value)})
                if budget.holds(value):
                    break
        quantized = len(set(candidates) - set(excluded))
    return SearchResult(excluded, value, budget.holds(value), attempts, ranking, quantized)
