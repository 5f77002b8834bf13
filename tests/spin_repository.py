"""A test model whose run time the request sets (a Loop of `input[0, 0]` steps), for queueing tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tiny_repository import CLASSES, FEATURES, write_tiny_repository

# Steps that outlast any test on any machine (1.4 µs a step on an AMD EPYC core, 2026-12-03: some 40
# years). Tests that send it end the server with SIGKILL; a graceful stop would wait for the run.
FOREVER = 1e15


def spin_model() -> onnx.ModelProto:
    """logits = sin^n(input) @ ones, n = int(input[0, 0]): zero steps for zeros, so warm-up is instant."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Sin", ["v_in"], ["v_out"])],
        "step",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["batch", FEATURES])],
    )
    graph = helper.make_graph(
        [helper.make_node("Slice", ["input", "zero", "one", "zero"], ["first_row"]),
         helper.make_node("ReduceMax", ["first_row"], ["steps_f"], keepdims=0),
         helper.make_node("Relu", ["steps_f"], ["steps_pos"]),  # negative inputs: no steps, not an error
         helper.make_node("Cast", ["steps_pos"], ["steps"], to=TensorProto.INT64),
         helper.make_node("Loop", ["steps", "", "input"], ["spun"], body=body),
         helper.make_node("MatMul", ["spun", "W"], ["logits"])],
        "spin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(np.array([0], np.int64), "zero"),
                     numpy_helper.from_array(np.array([1], np.int64), "one"),
                     numpy_helper.from_array(np.ones((FEATURES, CLASSES), np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def spin_rows(steps: float) -> np.ndarray:
    """One request row that makes the model run `steps` Loop steps."""
    x = np.zeros((1, FEATURES), np.float32)
    x[0, 0] = steps
    return x


def write_spin_repository(root: Path, name: str = "tiny") -> Path:
    """The tiny repository with both variants replaced by the spin model; returns the model folder."""
    folder = write_tiny_repository(root, name=name)
    manifest = json.loads((folder / "manifest.json").read_text())
    data = spin_model().SerializeToString()
    for variant, entry in manifest["variants"].items():
        (folder / variant / "model.onnx").write_bytes(data)
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder
