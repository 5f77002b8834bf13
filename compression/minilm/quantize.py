"""int8 with ONNX Runtime: dynamic quantization, per-channel weights, accuracy-aware fp32 fallback.

The recipe (`int8_dynamic_per_channel`): weights of every MatMul with a constant weight, and the
embedding tables (Gather), become int8 with one scale per output channel; activations are quantized
per tensor at run time (uint8, scale from each batch's range), so no calibration set is needed and
no activation range can be wrong for an unusual input. Products of two activations (attention scores
and mixing) stay fp32 (`MatMulConstBOnly`).

Fallback: each quantizable node's own error is measured on validation sentences — the fp32 inputs it
receives, pushed through its int8 arithmetic, against its fp32 output (relative Frobenius error) —
and the most sensitive nodes are kept fp32, a few more at a time, until the embedding meets the
budget on validation (mean and worst cosine against the fp32 model being quantized: the teacher for
`int8`, the distilled student for `distilled+int8`). Which nodes stayed fp32 is
recorded in the recipe. The held-out split plays no part in this choice.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from compression.minilm.measure import embed, quality, session

__all__ = ["Int8Options", "Int8Result", "node_sensitivity", "quantize_int8", "quantize_with_fallback"]

RECIPE = "int8_dynamic_per_channel"
# How many of the most sensitive nodes to keep fp32 at each try, until the budget holds.
FALLBACK_STEPS = (0, 1, 2, 4, 8, 12)


@dataclass(frozen=True)
class Int8Options:
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Gather")
    cosine_mean_budget: float = 0.99
    cosine_min_budget: float = 0.97

    def params(self) -> dict[str, Any]:
        return {"weights": "int8 symmetric", "activations": "uint8 per tensor, dynamic",
                "per_channel": self.per_channel, "reduce_range": self.reduce_range,
                "op_types": list(self.op_types), "MatMulConstBOnly": True,
                "budget": {"cosine_mean": self.cosine_mean_budget, "cosine_min": self.cosine_min_budget,
                           "measured_on": "validation", "against": "the fp32 parent"}}


@dataclass
class Int8Result:
    fp32_nodes: list[str]
    validation: dict[str, float]
    budget_met: bool
    sensitivity: list[tuple[str, float]] = field(default_factory=list)

    def params(self, options: Int8Options) -> dict[str, Any]:
        top = [{"node": n, "relative_error": round(e, 5)} for n, e in self.sensitivity[:5]]
        return {**options.params(), "fp32_nodes": self.fp32_nodes, "budget_met": self.budget_met,
                "validation_vs_parent": self.validation, "most_sensitive": top}


def quantize_int8(src: Path, dst: Path, options: Int8Options, exclude: list[str] | tuple = ()) -> None:
    """Dynamic int8 of `src` into `dst`, leaving the nodes named in `exclude` fp32."""
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT's chatter
    quantize_dynamic(str(src), str(dst), per_channel=options.per_channel,
                     reduce_range=options.reduce_range, weight_type=QuantType.QInt8,
                     op_types_to_quantize=list(options.op_types), nodes_to_exclude=list(exclude),
                     extra_options={"MatMulConstBOnly": True})


def _quantize_weight(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """Symmetric per-channel int quantization of `w` along `axis`, returned dequantized."""
    qmax = 2 ** (bits - 1) - 1
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=reduce, keepdims=True) / qmax
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def _quantize_activation(x: np.ndarray) -> np.ndarray:
    """uint8 asymmetric per-tensor quantization over the range including 0 (DynamicQuantizeLinear)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def node_sensitivity(src: Path, ids: np.ndarray, mask: np.ndarray, options: Int8Options
                     ) -> list[tuple[str, float]]:
    """(node, relative error of its int8 arithmetic on real inputs), most sensitive first."""
    model = onnx.load(str(src))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bits = 7 if options.reduce_range else 8
    nodes = [n for n in model.graph.node if n.op_type in options.op_types
             and (n.input[1] in weights if n.op_type == "MatMul" else n.input[0] in weights)]
    probes = [n.input[0] for n in nodes if n.op_type == "MatMul"]
    for name in dict.fromkeys(probes):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        probe_path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe_path))
        sess = session(probe_path)
        width = max(int(mask.sum(axis=1).max()), 1)
        names = [o.name for o in sess.get_outputs()]
        values = dict(zip(names, sess.run(None, {"input_ids": ids[:, :width],
                                                  "attention_mask": mask[:, :width]})))
    keep = mask[:, :width].astype(bool)
    errors = []
    for node in nodes:
        if node.op_type == "Gather":  # a table lookup: the error is that of the rows themselves
            w = weights[node.input[0]]
            wq = _quantize_weight(w, 0, bits) if options.per_channel else _quantize_weight(w, -1, bits)
            rel = float(np.linalg.norm(wq - w) / np.linalg.norm(w))
        else:
            x = values[node.input[0]]
            x = x[keep] if x.ndim == 3 else x  # real tokens only, padding does not count
            w = weights[node.input[1]]
            wq = _quantize_weight(w, 1, bits) if options.per_channel else _quantize_weight(w, -1, bits)
            exact = x @ w
            rel = float(np.linalg.norm(_quantize_activation(x) @ wq - exact) / np.linalg.norm(exact))
        errors.append((node.name, rel))
    return sorted(errors, key=lambda item: -item[1])


def quantize_with_fallback(src: Path, dst: Path, val_ids: np.ndarray, val_mask: np.ndarray,
                           options: Int8Options, probe_rows: int = 128) -> Int8Result:
    """Quantize `src` into `dst`, keeping the fewest sensitive nodes fp32 that meets the budget.

    The budget is fidelity to `src` itself (its fp32 embeddings of the validation sentences): what
    quantization costs, whatever `src` already lost against the teacher. If no step meets it, the
    try with the best worst-case cosine is kept and `budget_met` is False.
    """
    parent_ref = embed(session(src, threads=2), val_ids, val_mask)
    ranked = node_sensitivity(src, val_ids[:probe_rows], val_mask[:probe_rows], options)
    best: tuple[float, list[str], dict[str, float]] | None = None
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        for step in FALLBACK_STEPS:
            exclude = [name for name, _ in ranked[:step]]
            candidate = Path(tmp) / f"fallback_{step}.onnx"
            quantize_int8(src, candidate, options, exclude)
            q = quality(embed(session(candidate, threads=2), val_ids, val_mask), parent_ref)
            if q["cosine_mean"] >= options.cosine_mean_budget and q["cosine_min"] >= options.cosine_min_budget:
                candidate.replace(dst)
                return Int8Result(exclude, q, True, ranked)
            if best is None or q["cosine_min"] > best[0]:
                best = (q["cosine_min"], exclude, q)
                candidate.replace(dst)
    assert best is not None
    return Int8Result(best[1], best[2], False, ranked)
