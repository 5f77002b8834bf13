"""Fold Reshape targets that an exported graph computes at run time (Shape → Gather → Concat) into constants."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["fold_reshape_targets"]

log = logging.getLogger(__name__)


def fold_reshape_targets(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place; returns how many Reshape nodes now take a constant target.

    Traced transformers split heads with `x.view(*x.shape[:-1], heads, size)`, which exports as
    Shape, Gather, Unsqueeze and Concat nodes in front of every Reshape: about 0.15 ms of a 2 ms
    MiniLM int8 run at batch 1. Where symbolic shape inference shows that an entry of the target is
    the data's own dimension at the same position (the batch and sequence axes), ONNX's Reshape
    takes 0 for "copy that dimension"; when every entry is then a constant, the target becomes an
    initializer and the nodes that computed it are dropped. Outputs are bit-identical. A graph that
    shape inference cannot handle is left as it is.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception as exc:  # any failure only means there is nothing we can prove
        log.info("reshape folding skipped: symbolic shape inference failed: %s", exc)
        return 0
    dims = {value.name: _dims(value) for value in
            [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name: init for init in graph.initializer}

    def constant(name: str) -> np.ndarray | None:
        if name in constants:
            return numpy_helper.to_array(constants[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def symbolic_dim(name: str) -> str | None:
        """The symbol of `X`'s dimension i when `name` is Unsqueeze(Gather(Shape(X), i)) or Gather(...)."""
        node = producer.get(name)
        if node is not None and node.op_type == "Unsqueeze":
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Gather":
            return None
        index, shape = constant(node.input[1]), producer.get(node.input[0])
        if index is None or index.size != 1 or shape is None or shape.op_type != "Shape" or len(shape.attribute):
            return None  # Shape with start/end attributes would shift the index
        source = dims.get(shape.input[0])
        i = int(index.ravel()[0])
        if source is None or not -len(source) <= i < len(source):
            return None
        return source[i] if isinstance(source[i], str) else None

    folded = 0
    for node in graph.node:
        if node.op_type != "Reshape" or any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        concat, data = producer.get(node.input[1]), dims.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or data is None:
            continue
        target: list[int] = []
        for position, part in enumerate(concat.input):
            value = constant(part)
            if value is not None and value.size == 1:  # a constant 0 already means "copy"
                target.append(int(value.ravel()[0]))
                continue
            symbol = symbolic_dim(part)
            if symbol is not None and position < len(data) and data[position] == symbol:
                target.append(0)  # Reshape: 0 copies the input's dimension at this position
                continue
            break
        else:
            if target.count(-1) <= 1:
                name = f"{node.name or node.output[0]}__folded_shape"
                graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
                node.input[1] = name
                folded += 1
    if folded and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                          for node in graph.node for a in node.attribute):
        _drop_dead_nodes(graph)  # (subgraphs may read outer names; with them, leave dead nodes to ORT)
    return folded


def _dims(value: onnx.ValueInfoProto) -> list[str | int | None]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim]


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing uses any more, and initializers no node reads."""
    live = {out.name for out in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(out in live for out in node.output):
            keep.append(node)
            live.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    unused = [init for init in graph.initializer if init.name not in live]
    for init in unused:
        graph.initializer.remove(init)
