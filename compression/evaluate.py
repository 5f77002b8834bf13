"""Measure an exported ONNX file with ONNX Runtime: quality, parameters and latency."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["classification_quality", "latency", "onnx_parameters", "predict", "session"]

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session pinned to `threads` intra-op threads and one inter-op thread, as the
    server runs it, so build-time figures mean what they will mean when served."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of the session's first output for all rows of `x`."""
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


def onnx_parameters(path: Path) -> int:
    """Learned parameters stored in the file, counted as elements of weight initializers.

    fp32 files: every floating-point initializer. QDQ-quantized files: the quantized tensors that
    DequantizeLinear expands back (int8 weights, int32 biases), plus any float initializer that is
    not a quantization scale, i.e. the same logical parameters as the fp32 parent; scales and
    zero points are bookkeeping of the encoding, not parameters.
    """
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    quantized, encoding = set(), set()
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                quantized.add(node.input[0])
            encoding.update(node.input[1:])
    count = 0
    for name, tensor in inits.items():
        is_float = tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                        onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
        if name in quantized or (is_float and name not in encoding):
            count += int(np.prod(tensor.dims, dtype=np.int64))
    return count


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
