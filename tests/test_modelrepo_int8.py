"""Accuracy-aware int8: the budget, the per-node sensitivity and the nodes kept in fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelrepo.int8 import Budget, QuantizeOptions, budget_for, resolved_reduce_range, search, weighted_nodes
from modelrepo.measure import embedding_quality, run
from modelrepo.onnxinfo import int8_weights, onnx_parameters
from modelrepo.session import open_session


def mlp_onnx(path: Path, outlier: float) -> Path:
    """16 → 32 → 32 → 8 with ReLUs (Gemm nodes `fc1`, `fc2`, `fc3`). With `outlier` > 1, fc1's
    first output channel is that much larger and fc2 scales it back: one activation tensor whose
    range a single int8 scale cannot cover."""
    rng = np.random.default_rng(0)
    w1, w2, w3 = ((rng.normal(size=s) / np.sqrt(s[0])).astype(np.float32)
                  for s in ((16, 32), (32, 32), (32, 8)))
    b1 = np.zeros(32, np.float32)
    w1[:, 0] *= outlier
    b1[0] = outlier
    w2[0, :] /= outlier
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Gemm", ["r1", "w2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "w3"], ["y"], name="fc3")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(128, 16)).astype(np.float32), rng.normal(size=(96, 16)).astype(np.float32)


def run_search(tmp_path: Path, source: Path, data, minimum: float, **options):
    calibration, check = ({"x": a} for a in data)
    reference = run(open_session(source), check)
    target = tmp_path / "int8.onnx"
    quantize = QuantizeOptions(min_fidelity=minimum, **options)
    budget = budget_for("embedding", reference, None, quantize)
    result = search(source, target, calibration, check, reference, budget, quantize, False)
    return result, target, reference


def test_budget_met_at_once_keeps_everything_int8(tmp_path: Path, data) -> None:
    source = mlp_onnx(tmp_path / "plain.onnx", outlier=1.0)
    result, target, _ = run_search(tmp_path, source, data, 0.99)
    assert result.met and result.fp32_nodes == [] and result.sensitivity == []
    assert len(result.attempts) == 1 and result.quantized_nodes == 3
    assert int8_weights(target) == 16 * 32 + 32 * 32 + 32 * 8


def test_sensitive_nodes_go_back_to_fp32_until_the_budget_holds(tmp_path: Path, data) -> None:
    source = mlp_onnx(tmp_path / "outlier.onnx", outlier=1000.0)
    result, target, reference = run_search(tmp_path, source, data, 0.999)
    assert result.attempts[0]["met"] is False and result.attempts[0]["cosine_mean"] < 0.99
    # Ranked by output error when quantized alone: the layers around the wide tensor lead.
    ranked = [r["node"] for r in result.sensitivity]
    assert sorted(ranked) == ["fc1", "fc2", "fc3"]
    assert set(ranked[:2]) == {"fc1", "fc2"}
    assert result.met and set(result.fp32_nodes) <= {"fc1", "fc2"} and "fc3" not in result.fp32_nodes
    assert [a["fp32_nodes"] for a in result.attempts[1:]] == [result.fp32_nodes[:i + 1]
                                                            for i in range(len(result.fp32_nodes))]
    # The written file is the last attempt, checked again here with ONNX Runtime.
    out = run(open_session(target), {"x": data[1]})
    assert embedding_quality(out, reference)["cosine_mean"] == pytest.approx(result.value, abs=1e-6)
    assert int8_weights(target) == 32 * 8  # fc3 alone stays int8


def test_without_accuracy_awareness_a_miss_is_reported_not_fixed(tmp_path: Path, data) -> None:
    source = mlp_onnx(tmp_path / "outlier.onnx", outlier=1000.0)
    result, _, _ = run_search(tmp_path, source, data, 0.999, accuracy_aware=False)
    assert not result.met and result.fp32_nodes == [] and len(result.attempts) == 1


def test_dynamic_mode_quantizes_weights_only(tmp_path: Path, data) -> None:
    source = mlp_onnx(tmp_path / "plain.onnx", outlier=1.0)
    result, target, _ = run_search(tmp_path, source, data, 0.99, mode="dynamic")
    ops = {n.op_type for n in onnx.load(str(target)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    assert result.met
    assert onnx_parameters(target) == onnx_parameters(source)


def test_weighted_nodes_and_budget_arithmetic(tmp_path: Path) -> None:
    assert weighted_nodes(mlp_onnx(tmp_path / "m.onnx", 1.0)) == ["fc1", "fc2", "fc3"]
    drop = Budget("accuracy", 0.95, max_drop_points=1.0)
    assert drop.holds({"accuracy": 0.94}) and not drop.holds({"accuracy": 0.9399})
    assert Budget("agreement", 1.0, min_value=0.99).holds({"agreement": 0.99})
    assert drop.as_params() == {"metric": "accuracy", "max_drop_points": 1.0, "split": "validation",
                                "against": "the fp32 parent", "parent_value": 0.95}
    worst = Budget("cosine_mean", 1.0, min_value=0.99, min_worst=0.97)
    assert worst.holds({"cosine_mean": 0.995, "cosine_min": 0.975})
    assert not worst.holds({"cosine_mean": 0.995, "cosine_min": 0.96})


def test_two_input_model_calibrates_and_checks_by_input_name(tmp_path: Path) -> None:
    """A model with inputs a and b (y = a @ W1 + b @ W2) quantizes statically from named arrays."""
    rng = np.random.default_rng(2)
    w1, w2 = (rng.normal(size=(8, 4)).astype(np.float32) for _ in range(2))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w1"], ["p"], name="mm1"),
         helper.make_node("MatMul", ["b", "w2"], ["q"], name="mm2"), helper.make_node("Add", ["p", "q"], ["y"])],
        "two", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 8]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    source = tmp_path / "two.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(source))
    feeds = {n: rng.normal(size=(64, 8)).astype(np.float32) for n in ("b", "a")}  # order must not matter
    reference = run(open_session(source), feeds)
    options = QuantizeOptions(min_fidelity=0.99)
    result = search(source, tmp_path / "int8.onnx", feeds, feeds, reference,
                    budget_for("embedding", reference, None, options), options, False)
    assert result.met and result.quantized_nodes == 2
    assert int8_weights(tmp_path / "int8.onnx") == 2 * 8 * 4


def test_reduce_range_only_where_int8_dot_products_are_slow() -> None:
    options = QuantizeOptions()
    assert resolved_reduce_range(options, {"avx2", "fma"}) is True
    assert resolved_reduce_range(options, {"avx2", "avx512_vnni"}) is False
    assert resolved_reduce_range(options, {"asimd", "asimddp"}) is False
    assert resolved_reduce_range(QuantizeOptions(reduce_range=False), {"avx2"}) is False
