"""int8 of an ONNX file with ONNX Runtime: path in, path out, within a quality budget.

Static mode writes QDQ (activation ranges calibrated on training rows: minmax, entropy or
percentile); dynamic mode quantizes weights and computes activation scales per batch at run time.
Weights are int8, per output channel by default. Inputs are named arrays, so models with several
inputs (token ids and masks, two feature sets) calibrate and check like single-input ones.

Accuracy-aware (`search`): the first result is checked against the budget on validation rows with
ONNX Runtime on this CPU. If it misses, every weighted node (MatMul, Gemm, Conv, ...) is quantized
alone and its output error against the fp32 parent measured; the most sensitive nodes then go back
to fp32 (`nodes_to_exclude`), one at a time, until the budget holds.
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
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from modelrepo.measure import Feeds, count, embedding_quality, run, take
from modelrepo.session import open_session

__all__ = ["ACTIVATION_TYPES", "CALIBRATION_METHODS", "MODES", "Budget", "FeedsReader", "QuantizeOptions",
           "SearchResult", "budget_for", "prepared_model", "quantize_int8", "resolved_reduce_range", "search",
           "weighted_nodes"]

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
    op_types: tuple[str, ...] | None = None
    """Operator types to quantize (None: ORT's default set for the mode)."""
    matmul_const_b_only: bool = False
    """Dynamic mode: quantize only MatMuls by a stored weight (not attention's activation products)."""
    batch_size: int = 32
    max_drop: float = 1.0
    """Budget with labels: at most this many accuracy points below the parent (validation)."""
    min_fidelity: float = 0.99
    """Budget without labels: top-1 agreement (classifiers) or cosine_mean with the parent."""
    min_worst_cosine: float | None = None
    """Embeddings: also the worst validation row's cosine to the parent (None: not checked)."""
    accuracy_aware: bool = True
    """Keep the most sensitive nodes in fp32 until the budget holds."""

    def as_params(self) -> dict[str, object]:
        common: dict[str, object] = {"weight_type": "int8", "per_channel": self.per_channel,
                                     "preprocess": self.preprocess}
        if self.op_types is not None:
            common["op_types"] = list(self.op_types)
        if self.mode == "dynamic":
            return {"tool": "onnxruntime.quantization.quantize_dynamic", "mode": "dynamic",
                    "format": "QOperator (MatMulInteger / ConvInteger)",
                    "activations": "uint8 per tensor, quantized at run time per batch",
                    "MatMulConstBOnly": self.matmul_const_b_only, **common}
        return {"tool": "onnxruntime.quantization.quantize_static", "mode": "static", "format": "QDQ",
                "activation_type": self.activation_type, **common,
                "calibration_method": self.calibration_method,
                "calibration_samples": self.calibration_samples, "calibration_split": "train"}


def resolved_reduce_range(options: QuantizeOptions, cpu_flags: set[str]) -> bool:
    """`options.reduce_range`, or (auto) true on x86 CPUs without fast int8 dot products."""
    if options.reduce_range is not None:
        return options.reduce_range
    x86 = "avx2" in cpu_flags or "sse4_1" in cpu_flags
    return x86 and not (FAST_INT8 & cpu_flags)


class FeedsReader(CalibrationDataReader):
    """Feeds calibration rows to the quantizer in batches, every input by name."""

    def __init__(self, feeds: Feeds, batch_size: int) -> None:
        total = count(feeds)
        self._batches = iter([take(feeds, slice(i, i + batch_size)) for i in range(0, total, batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@contextlib.contextmanager
def _quiet() -> Any:
    """The quantizer prints (histogram calibrators) and logs warnings per node."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_int8(source: Path, target: Path, calibration: Feeds | None, options: QuantizeOptions,
                  exclude: list[str] | None = None, only: list[str] | None = None,
                  cache: Path | None = None, reduce_range: bool = False) -> Path:
    """Quantize `source` (already through `prepared_model`) into `target`.

    `exclude` nodes stay fp32; `only`, when given, limits quantization to those nodes. `cache`
    (static mode) is a calibration-range file: written on the first call, reused after.
    """
    if options.mode not in MODES:
        raise ValueError(f"unknown int8 mode {options.mode!r}; use static or dynamic")
    if options.calibration_method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {options.calibration_method!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    op_types = list(options.op_types) if options.op_types is not None else None
    with _quiet():
        if options.mode == "dynamic":
            quantize_dynamic(str(source), str(target), per_channel=options.per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8,
                             op_types_to_quantize=op_types, nodes_to_quantize=only,
                             nodes_to_exclude=exclude or [],
                             extra_options={"MatMulConstBOnly": options.matmul_const_b_only})
        else:
            if calibration is None or not count(calibration):
                raise ValueError("static int8 needs calibration rows; use mode dynamic")
            quantize_static(
                str(source), str(target), FeedsReader(calibration, options.batch_size),
                quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                reduce_range=reduce_range, weight_type=QuantType.QInt8,
                activation_type=ACTIVATION_TYPES[options.activation_type],
                calibrate_method=CALIBRATION_METHODS[options.calibration_method],
                op_types_to_quantize=op_types, nodes_to_quantize=only,
                nodes_to_exclude=exclude or [], calibration_cache_path=cache)
    return target


def prepared_model(source: Path, scratch: Path, preprocess: bool) -> Path:
    """The file to quantize: `source` pre-processed (when asked) and without stale `value_info`,
    written under `scratch` when it differs (only the quantized file belongs in the repository)."""
    path = source
    if preprocess:
        path = scratch / "preprocessed.onnx"
        with _quiet():
            quant_pre_process(str(source), str(path), skip_symbolic_shape=False)
    model = onnx.load(str(path))
    if not _drop_stale_value_info(model.graph):
        return path
    cleaned = scratch / "prepared.onnx"
    onnx.save(model, str(cleaned))
    return cleaned


def _drop_stale_value_info(graph: onnx.GraphProto) -> bool:
    """Keep `value_info` only for values a node computes; true when something was dropped.

    Exporters (torch.onnx) also describe the initializers there, and pre-processing keeps the
    entries of values it folded into initializers. Dynamic quantization turns Gemm(transB=1) into
    MatMul by transposing the weight under the same name, so such an entry then contradicts the
    tensor and ONNX shape inference stops with "Inferred shape and existing shape differ". An
    initializer carries its own type and shape; nothing is lost by dropping its entry.
    """
    produced = {name for node in graph.node for name in node.output}
    stored = {t.name for t in graph.initializer}
    keep = [v for v in graph.value_info if v.name in produced and v.name not in stored]
    if len(keep) == len(graph.value_info):
        return False
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return True


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
    """What "good enough" means for an int8 child, measured on validation rows against its parent."""

    metric: str
    """accuracy (with labels), agreement or cosine_mean (against the parent, without)."""
    parent_value: float
    max_drop_points: float | None = None
    min_value: float | None = None
    min_worst: float | None = None
    """Embeddings: the least cosine any row may have (cosine_min), or None."""
    score: Callable[[np.ndarray], dict[str, float]] = field(default=lambda out: {}, repr=False)
    """The metric (and `cosine_min` for embeddings) of a candidate's validation outputs."""

    def holds(self, scores: dict[str, float]) -> bool:
        value = scores[self.metric]
        if self.min_worst is not None and scores.get("cosine_min", 1.0) < self.min_worst - 1e-12:
            return False
        if self.max_drop_points is not None:
            return 100.0 * (self.parent_value - value) <= self.max_drop_points + 1e-9
        return value >= (self.min_value or 0.0) - 1e-12

    def as_params(self) -> dict[str, object]:
        limit: dict[str, object] = ({"max_drop_points": self.max_drop_points} if self.max_drop_points is not None
                                    else {"min_value": self.min_value})
        if self.min_worst is not None:
            limit["min_cosine_min"] = self.min_worst
        return {"metric": self.metric, **limit, "split": "validation", "against": "the fp32 parent",
                "parent_value": round(self.parent_value, 6)}


def budget_for(task: str, reference: np.ndarray, labels: np.ndarray | None,
               options: QuantizeOptions) -> Budget:
    """The int8 budget of `options` against the parent's validation outputs `reference`."""
    if task == "classification":
        if labels is not None:
            def accuracy(out: np.ndarray) -> dict[str, float]:
                return {"accuracy": float((out.argmax(axis=1) == labels).mean())}
            return Budget("accuracy", accuracy(reference)["accuracy"], max_drop_points=options.max_drop,
                          score=accuracy)
        top1 = reference.argmax(axis=1)
        return Budget("agreement", 1.0, min_value=options.min_fidelity,
                      score=lambda out: {"agreement": float((out.argmax(axis=1) == top1).mean())})

    def fidelity(out: np.ndarray) -> dict[str, float]:
        q = embedding_quality(out, reference)
        return {"cosine_mean": q["cosine_mean"], "cosine_min": q["cosine_min"]}
    return Budget("cosine_mean", 1.0, min_value=options.min_fidelity, min_worst=options.min_worst_cosine,
                  score=fidelity)


@dataclass
class SearchResult:
    fp32_nodes: list[str]
    scores: dict[str, float]
    met: bool
    attempts: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    quantized_nodes: int

    @property
    def value(self) -> float:
        return next(iter(self.scores.values()))


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    out, ref = out.reshape(len(out), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))


def search(source: Path, target: Path, calibration: Feeds | None, check: Feeds, reference: np.ndarray,
           budget: Budget, options: QuantizeOptions, reduce_range: bool,
           note: Callable[[str], None] = lambda line: None) -> SearchResult:
    """Quantize `source` into `target`, keeping nodes in fp32 until `budget` holds on `check`
    (outputs compared with `reference`, the fp32 parent's outputs on the same rows)."""
    with tempfile.TemporaryDirectory(prefix="slimserve-quant-") as scratch_dir:
        scratch = Path(scratch_dir)
        model_in = prepared_model(source, scratch, options.preprocess)
        cache = scratch / "calibration.json" if options.mode == "static" else None
        weights = _node_weights(model_in)
        candidates = list(weights)

        def attempt(path: Path, exclude: list[str] | None = None,
                    only: list[str] | None = None) -> np.ndarray:
            quantize_int8(model_in, path, calibration, options, exclude, only, cache, reduce_range)
            return run(open_session(path), check)

        scores = budget.score(attempt(target))
        attempts = [{"fp32_nodes": [], **_rounded(scores), "met": budget.holds(scores)}]
        excluded: list[str] = []
        ranking: list[dict[str, Any]] = []
        if not budget.holds(scores) and options.accuracy_aware and candidates:
            note(f"budget missed ({_rounded(scores)}); measuring the sensitivity of {len(candidates)} nodes")
            for name in candidates:
                alone = attempt(scratch / "single.onnx", only=[name])
                ranking.append({"node": name, "weight": weights[name],
                                "relative_error": round(_relative_error(alone, reference), 6),
                                **_rounded(budget.score(alone))})
            ranking.sort(key=lambda r: -r["relative_error"])
            note("most sensitive: " + ", ".join(f"{r['node']} ({r['weight']}) {r['relative_error']:.4f}"
                                                for r in ranking[:5]))
            for entry in ranking:
                excluded.append(entry["node"])
                scores = budget.score(attempt(target, exclude=list(excluded)))
                attempts.append({"fp32_nodes": list(excluded), **_rounded(scores), "met": budget.holds(scores)})
                if budget.holds(scores):
                    break
        quantized = len(set(candidates) - set(excluded))
    return SearchResult(excluded, scores, budget.holds(scores), attempts, ranking, quantized)


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in scores.items()}
