"""Measure an exported ONNX file with ONNX Runtime: quality, parameters, MACs and latency."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from server.session_options import open_session

__all__ = ["SHARED_SUFFIXES", "classification_quality", "embedding_quality", "int8_weights",
           "latency", "onnx_macs", "onnx_parameters", "quality", "run", "session"]

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Initializers of a weight-shared matrix (compression.share): indices, codebook, logical shape.
SHARED_SUFFIXES = ("__shared_indices", "__shared_codebook", "__shared_shape")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16)


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session pinned to `threads` intra-op threads and one inter-op thread, as the
    server runs it, so build-time figures mean what they will mean when served."""
    return open_session(path, threads)


def run(sess: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The session's first output for all rows of `x`."""
    name = sess.get_inputs()[0].name
    parts = [sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(parts)



def classification_quality(logits: np.ndarray, labels: np.ndarray | None,
                           teacher_top1: np.ndarray) -> dict[str, float]:
    """`accuracy` against the labels (when there are labels) and top-1 `agreement` with the teacher."""
    top1 = logits.argmax(axis=1)
    quality = {"agreement": round(float((top1 == teacher_top1).mean()), 6)}
    if labels is not None:
        quality = {"accuracy": round(float((top1 == labels).mean()), 6), **quality}
    return quality


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.reshape(len(rows), -1).astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def embedding_quality(out: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Per-row cosine with the teacher's output (flattened): `cosine_mean`, `cosine_min`; and
    `neighbour_agreement`: share of rows whose nearest other row (by cosine) is the same one
    under the variant as under the teacher."""
    a, b = _unit(out), _unit(teacher)
    cos = (a * b).sum(axis=1)

    def nearest(e: np.ndarray) -> np.ndarray:
        sims = e @ e.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(axis=1)

    return {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
            "neighbour_agreement": round(float((nearest(a) == nearest(b)).mean()), 6)}


def quality(task: str, out: np.ndarray, labels: np.ndarray | None, teacher: np.ndarray) -> dict[str, float]:
    """The manifest's quality record of a variant's outputs on held-out rows."""
    if task == "classification":
        return classification_quality(out, labels, teacher.argmax(axis=1))
    return embedding_quality(out, teacher)


def onnx_parameters(path: Path) -> int:
    """Learned parameters stored in the file, counted as elements of weight initializers.

    fp32 files: every floating-point initializer. QDQ-quantized files: the quantized tensors that
    DequantizeLinear expands back (int8 weights, int32 biases), plus any float initializer that is
    not a quantization scale, i.e. the same logical parameters as the fp32 parent; scales and
    zero points are bookkeeping of the encoding, not parameters. Dynamic (QOperator) files: int8
    weights of MatMulInteger / ConvInteger. Weight-shared files: the logical elements of each
    shared matrix (its recorded shape); codebooks and packed indices are its encoding.
    """
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    quantized, encoding = set(), set()
    # Dynamic files multiply the run-time activation scale by the stored weight scale.
    run_scales = {n.output[1] for n in model.graph.node
                  if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 1}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                quantized.add(node.input[0])
            encoding.update(node.input[1:])
        elif node.op_type in ("MatMulInteger", "ConvInteger"):
            if node.input[1] in inits:
                quantized.add(node.input[1])
            encoding.update(node.input[2:])
        elif node.op_type == "Mul" and run_scales & set(node.input):
            encoding.update(node.input)
    count = 0
    for name, tensor in inits.items():
        if name.endswith(SHARED_SUFFIXES):
            if name.endswith("__shared_shape"):
                count += int(np.prod(numpy_helper.to_array(tensor), dtype=np.int64))
            continue
        is_float = tensor.data_type in FLOAT_TYPES
        if name in quantized or (is_float and name not in encoding):
            count += int(np.prod(tensor.dims, dtype=np.int64))
    return count


def int8_weights(path: Path) -> int:
    """Elements of weights stored as 8-bit integers: DequantizeLinear's stored inputs (static
    QDQ) and MatMulInteger / ConvInteger's stored weights (dynamic); zero points not counted."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    small = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    names = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            names.add(node.input[0])
        elif node.op_type in ("MatMulInteger", "ConvInteger") and len(node.input) > 1:
            names.add(node.input[1])
    return sum(int(np.prod(inits[n].dims, dtype=np.int64)) for n in names
               if n in inits and inits[n].data_type in small)


def onnx_macs(path: Path, example: np.ndarray) -> int:
    """Multiply-accumulates per sample of the MatMul / Gemm / Conv nodes, from ONNX shape
    inference with the example's shape (batch of one). Used where no torch model exists."""
    model = onnx.load(str(path))
    graph_input = model.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    for i, dim in enumerate(dims):
        dim.ClearField("dim_param")
        dim.dim_value = 1 if i == 0 else int(example.shape[i])
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    macs = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if not out or 0 in out:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            if not a:
                continue
            transposed = any(attr.name == "transA" and attr.i for attr in node.attribute)
            k = a[0] if node.op_type == "Gemm" and transposed else a[-1]
            macs += int(np.prod(out)) * k
        elif node.op_type == "Conv":
            w = shapes.get(node.input[1])
            if w:
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
    return macs


def _percentiles(times: list[float]) -> dict[str, float | int]:
    ms = np.asarray(times) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p95_ms": round(float(np.percentile(ms, 95)), 4), "runs": len(times)}


def latency(path: Path, x: np.ndarray, threads: int, runs: dict[int, int],
            warmup: int = 20) -> dict[str, dict[str, float | int]]:
    """p50/p95 wall time of `session.run` per batch size, e.g. runs={1: 200, 32: 100}.

    Rows are real samples cycled through `x`, so the figures include nothing but the run itself.
    """
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    result = {}
    for batch, count in runs.items():
        # A few different real batches, wrapping around `x` when it is short.
        batches = [x[(np.arange(batch) + i * batch) % len(x)] for i in range(8)]
        for i in range(warmup):
            sess.run(None, {name: batches[i % len(batches)]})
        times = []
        for i in range(count):
            feed = {name: batches[i % len(batches)]}
            began = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - began)
        result[f"batch_{batch}"] = _percentiles(times)
    return result
