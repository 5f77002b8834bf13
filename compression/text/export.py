"""A TextModel as one ONNX graph: `input_ids`, `attention_mask` (INT64 [-1, -1]) → output [-1, width].

TorchScript exporter (`torch.onnx.export(..., dynamo=False)`), opset 17, dynamic batch and sequence
axes, the output's width written as a fixed dimension, Reshape targets folded to constants
(`compression.reshape_fold`), and the ONNX checker run on the result. The trace input has a padded
row, so the attention-mask code takes its general path (not a shortcut for all-ones masks).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from compression.reshape_fold import fold_reshape_targets
from compression.text.model import TextModel
from compression.text.run import onnx_outputs, torch_outputs

__all__ = ["INPUTS", "OPSET", "export_onnx", "parity"]

INPUTS = ("input_ids", "attention_mask")
OPSET = 17


def _trace_inputs(model: TextModel) -> tuple[torch.Tensor, torch.Tensor]:
    pad = model.pad_id
    vocab = int(model.config.vocab_size)
    a, b, c, d = [i for i in range(2, 12) if i != pad and i < vocab][:4]
    ids = torch.tensor([[a, b, c, d], [a, b, d, pad]], dtype=torch.int64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.int64)
    return ids, mask


def export_onnx(model: TextModel, path: Path, output_name: str, output_width: int) -> None:
    """Trace `model` to ONNX at `path` (see the module docstring); output `output_name` [-1, width]."""
    was_training = model.training
    model.eval()
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            output_name: {0: "batch"}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(model, _trace_inputs(model), str(path), input_names=list(INPUTS),
                              output_names=[output_name], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True)
    finally:
        model.train(was_training)
    graph = onnx.load(str(path))
    dims = graph.graph.output[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = int(output_width)  # the tracer leaves a symbolic name on the fixed width
    graph.producer_name = "slimserve"
    fold_reshape_targets(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def parity(model: TextModel, onnx_path: Path, ids: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How closely the ONNX export (ONNX Runtime, the server's session options) reproduces PyTorch.

    Embeddings: `{"worst_cosine": min_i cos(onnx_i, torch_i), "rows": n}`.
    Classifiers: `{"max_abs_diff": max |onnx logit - torch logit|, "top1_agreement": share of rows
    with the same arg-max, "rows": n}`.
    """
    reference = torch_outputs(model, ids, mask)
    exported = onnx_outputs(Path(onnx_path), ids, mask, threads=2)
    if model.task == "embedding":
        a = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
        b = exported / np.maximum(np.linalg.norm(exported, axis=1, keepdims=True), 1e-12)
        return {"worst_cosine": round(float((a * b).sum(axis=1).min()), 7), "rows": len(ids)}
    return {"max_abs_diff": float(np.abs(reference - exported).max()),
            "top1_agreement": float((reference.argmax(axis=1) == exported.argmax(axis=1)).mean()),
            "rows": len(ids)}
