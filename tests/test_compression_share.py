"""Weight sharing: k-means codebooks, bit packing, and a smaller ONNX file ONNX Runtime still runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.share import ShareOptions, kmeans_1d, pack_bits, share_weights, unpack_bits
from modelrepo.measure import run
from modelrepo.onnxinfo import onnx_parameters
from modelrepo.session import open_session


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_and_unpack_round_trip(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for n in (1, 7, 1001):
        index = rng.integers(0, 2 ** bits, size=n).astype(np.uint8)
        packed = pack_bits(index, bits)
        assert len(packed) == (n * bits + 7) // 8 + 1  # really `bits` per index, plus one pad byte
        assert np.array_equal(unpack_bits(packed, bits, n), index)


def test_kmeans_codebook_is_small_and_error_falls_with_bits() -> None:
    values = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    errors = []
    for bits in (2, 4, 6):
        codebook, index = kmeans_1d(values, 2 ** bits, 30)
        assert codebook.shape == (2 ** bits,) and index.max() < 2 ** bits
        assert np.all(np.diff(codebook) >= 0)  # sorted: linear initialisation keeps order
        rebuilt = codebook[index].reshape(values.shape)
        errors.append(np.linalg.norm(rebuilt - values) / np.linalg.norm(values))
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 0.15


def matmul_model(path: Path) -> tuple[Path, np.ndarray]:
    w = np.random.default_rng(3).normal(size=(512, 128)).astype(np.float32)
    bias = np.arange(128, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 128])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)
    onnx.save_model(model, str(path))
    return path, w


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_shared_file_is_smaller_and_rebuilds_the_codebook_weights(tmp_path: Path, bits: int) -> None:
    source, w = matmul_model(tmp_path / "fp32.onnx")
    target = tmp_path / "shared.onnx"
    record = share_weights(source, target, ShareOptions(bits=bits, min_elements=100))
    assert list(record) == ["w"]  # the bias is too small to share
    assert record["w"]["shape"] == [512, 128] and record["w"]["centroids_used"] <= 2 ** bits
    # `bits` per weight plus a fixed ~1.5 kB for the codebook and the rebuilding nodes.
    assert target.stat().st_size < source.stat().st_size * (bits + 1) / 32
    model = onnx.load(str(target))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert "w" not in inits and inits["w__shared_indices"].dtype == np.uint8
    codebook = inits["w__shared_codebook"]
    index = unpack_bits(inits["w__shared_indices"], bits, w.size)
    expected = codebook[index].reshape(w.shape)
    x = np.random.default_rng(4).normal(size=(5, 512)).astype(np.float32)
    got = run(open_session(target), {"x": x})
    np.testing.assert_allclose(got, x @ expected + np.arange(128, dtype=np.float32), rtol=1e-5, atol=1e-4)
    # Logical parameters, as in the fp32 file: the encoding is not counted as parameters.
    assert onnx_parameters(target) == onnx_parameters(source) == 512 * 128 + 128


def test_old_opsets_are_refused(tmp_path: Path) -> None:
    source, _ = matmul_model(tmp_path / "fp32.onnx")
    model = onnx.load(str(source))
    model.opset_import[0].version = 9
    onnx.save_model(model, str(source))
    with pytest.raises(ValueError, match="opset"):
        share_weights(source, tmp_path / "shared.onnx", ShareOptions())
