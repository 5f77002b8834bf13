"""Accuracy-aware int8: the budget, the per-node sensitivity and the nodes kept in fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression import evaluate
from compression.progress import Progress
from compression.quantize import Budget, QuantizeOptions, search, weighted_nodes


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


def fidelity(reference: np.ndarray, minimum: float) -> Budget:
    return Budget("cosine_mean", 1.0, min_value=minimum,
                  score=lambda out: evaluate.embedding_quality(out, reference)["cosine_mean"])


def run_search(tmp_path: Path, source: Path, data, minimum: float, **options):
    calibration, check = data
    reference = evaluate.run(evaluate.session(source), check)
    target = tmp_path / "int8.onnx"
    result = search(source, target, "x", calibration, check, reference, fidelity(reference, minimum),
                    QuantizeOptions(**options), False, Progress(quiet=True), "int8")
    return result, target, reference


def test_budget_met_at_once_keeps_everything_int8(tmp_path: Path, data) -> None:
    source = mlp_onnx(tmp_path / "plain.onnx", outlier=1.0)
    result, target, _ = run_search(tmp_path, source, data, 0.99)
    assert result.met and result.fp32_nodes == [] and result.sensitivity == []
    assert len(result.attempts) == 1 and result.quantized_nodes == 3
    assert evaluate.int8_weights(target) == 16 * 32 + 32 * 32 + 32 * 8


def test_sensitive_nodes_go_back_to_fp32_until_the_budget_holds(tmp_path: Path, data) -> None:
    source = mlp_onnx(tmp_path / "outlier.onnx", outlier=1000.0)
    result, target, reference = run_search(tmp_path, source, data, 0.999)
    assert result.attempts[0]["met"] is False and result.attempts[0]["value"] < 0.99
    # Ranked by output error when quantized alone: the layers around the wide tensor lead.
    ranked = [r["node"] for r in result.sensitivity]
    assert sorted(ranked) == ["fc1", "fc2", "fc3"]
    assert set(ranked[:2]) == {"fc1", "fc2"}
    assert result.met and set(result.fp32_nodes) <= {"fc1", "fc2"} and "fc3" not in result.fp32_nodes
    assert [a["fp32_nodes"] for a in result.attempts[1:]] == [result.fp32_nodes[:i + 1]
                                                            for i in range(len(result.fp32_nodes))]
    # The written file is the last attempt, checked again here with ONNX Runtime.
    out = evaluate.run(evaluate.session(target), data[1])
    assert evaluate.embedding_quality(out, reference)["cosine_mean"] == pytest.approx(result.value, abs=1e-6)
    assert evaluate.int8_weights(target) == 32 * 8  # fc3 alone stays int8


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
    assert evaluate.onnx_parameters(target) == evaluate.onnx_parameters(source)


def test_weighted_nodes_and_budget_arithmetic(tmp_path: Path) -> None:
    assert weighted_nodes(mlp_onnx(tmp_path / "m.onnx", 1.0)) == ["fc1", "fc2", "fc3"]
    drop = Budget("accuracy", 0.95, max_drop_points=1.0)
    assert drop.holds(0.94) and not drop.holds(0.9399)
    assert Budget("agreement", 1.0, min_value=0.99).holds(0.99)
    assert drop.as_params() == {"metric": "accuracy", "max_drop_points": 1.0, "split": "validation",
                                "parent_value": 0.95}


def test_reduce_range_only_where_int8_dot_products_are_slow() -> None:
    options = QuantizeOptions()
    assert options.resolved_reduce_range({"avx2", "fma"}) is True
    assert options.resolved_reduce_range({"avx2", "avx512_vnni"}) is False
    assert options.resolved_reduce_range({"asimd", "asimddp"}) is False
    assert QuantizeOptions(reduce_range=False).resolved_reduce_range({"avx2"}) is False
