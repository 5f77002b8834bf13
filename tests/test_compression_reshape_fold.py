"""Reshape targets computed from Shape ops fold into constants only where the copied dims provably match."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compression.reshape_fold import fold_reshape_targets


def _head_split_model(order: tuple[int, int]) -> onnx.ModelProto:
    """x [batch, seq, 8] -> MatMul -> Reshape to [dim order[0] of x, dim order[1] of x, 2, 4], as a
    traced `view(*x.shape[:2], 2, 4)` exports it (with `order` = (0, 1))."""
    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8) / 64, "w")
    ints = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
            (("i0", order[0]), ("i1", order[1]), ("axes", [0]), ("heads", [2]), ("size", [4]))]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["d0"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["d1"], axis=0),
        helper.make_node("Unsqueeze", ["d0", "axes"], ["u0"]),
        helper.make_node("Unsqueeze", ["d1", "axes"], ["u1"]),
        helper.make_node("Concat", ["u0", "u1", "heads", "size"], ["target"], axis=0),
        helper.make_node("Reshape", ["y", "target"], ["out"], name="split_heads"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, None, 2, 4])], [w, *ints])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_batch_and_sequence_dims_fold_and_outputs_stay_identical() -> None:
    model = _head_split_model((0, 1))
    original = onnx.ModelProto()
    original.CopyFrom(model)
    assert fold_reshape_targets(model) == 1
    onnx.checker.check_model(model)
    assert not {"Shape", "Gather", "Concat", "Unsqueeze"} & {n.op_type for n in model.graph.node}
    target = next(i for i in model.graph.initializer if i.name.endswith("__folded_shape"))
    assert numpy_helper.to_array(target).tolist() == [0, 0, 2, 4]
    for shape in ((1, 3, 8), (5, 7, 8)):  # the folded model must still follow the dynamic axes
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        np.testing.assert_array_equal(_run(model, x), _run(original, x))


def test_dims_taken_from_other_positions_are_left_alone() -> None:
    model = _head_split_model((1, 0))  # [seq, batch, 2, 4]: not a copy of the data's own dims
    assert fold_reshape_targets(model) == 0
    assert "Shape" in {n.op_type for n in model.graph.node}
