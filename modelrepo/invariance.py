"""Batch invariance read from an ONNX graph: can one row's answer depend on the rows run beside it?"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import onnx

__all__ = ["BATCH_COUPLING_OPS", "batch_invariant", "coupling_nodes"]

# Operators that compute one statistic over the whole input tensor, batch axis included: dynamic
# quantization derives one activation scale and zero point per tensor at run time, so a row's int8
# codes (and its output) change with its batch-mates. Measured on MiniLM dynamic int8: the same row
# alone and in a batch of 4 differs by up to 0.021 (fp32 variants: at most 1.2e-7, float rounding).
BATCH_COUPLING_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
_REDUCE_OPS = frozenset({"ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
                         "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those of subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _nodes(sub)


def _reduces_everything(node: onnx.NodeProto) -> bool:
    """A Reduce* node without axes (attribute or input) reduces every axis, the batch axis too."""
    if node.op_type not in _REDUCE_OPS:
        return False
    attrs = {a.name: a for a in node.attribute}
    has_axes_input = len(node.input) > 1 and node.input[1] != ""
    if "axes" in attrs or has_axes_input:
        return False
    return not ("noop_with_empty_axes" in attrs and attrs["noop_with_empty_axes"].i == 1)


def coupling_nodes(model: onnx.ModelProto) -> list[str]:
    """Names (or op types) of the nodes that mix rows of a batch; empty for a batch-invariant graph."""
    return [node.name or node.op_type for node in _nodes(model.graph)
            if node.op_type in BATCH_COUPLING_OPS or _reduces_everything(node)]


def batch_invariant(path: Path | str) -> bool:
    """True when the ONNX file at `path` answers each row independently of the others, up to float
    rounding (kernels may block a matrix product differently by batch size: ~1e-7 on MiniLM fp32)."""
    model = onnx.load(str(path), load_external_data=False)  # the graph is enough; weights are not read
    return not coupling_nodes(model)
