"""Weight sharing (Han, Mao & Dally 2016, "Deep Compression", section 3): path in, path out.

Each weight matrix is clustered with 1-D k-means into 2^bits centroids (linear initialisation over
[min, max], as the paper recommends); the file then stores, per matrix, the cluster indices packed
`bits` to an index into a uint8 tensor, the float codebook and the logical shape. A small subgraph
in front of the model rebuilds each matrix (unpack the bits, Gather the codebook, Reshape), so ONNX
Runtime serves the file unchanged; it folds that subgraph into constants when the session loads.

This saves storage and download bytes, not compute or memory: once loaded, the weights are fp32
again and every multiply-accumulate is what it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["ShareOptions", "kmeans_1d", "pack_bits", "share_weights", "unpack_bits"]

MIN_OPSET = 11  # BitShift, Range


@dataclass(frozen=True)
class ShareOptions:
    bits: int = 4
    """Index width: 2^bits shared values per matrix."""
    min_elements: int = 1024
    """Smaller tensors (biases, norms, tiny kernels) stay as they are: sharing would not pay."""
    iterations: int = 30

    def as_params(self) -> dict[str, object]:
        return {"paper": "Han, Mao, Dally 2016, Deep Compression (weight sharing)",
                "clustering": "1-D k-means per matrix, linear initialisation",
                "bits": self.bits, "centroids_per_matrix": 2 ** self.bits,
                "min_elements": self.min_elements, "iterations": self.iterations,
                "stored_as": "packed uint8 indices + float32 codebook, rebuilt by Gather in the graph",
                "saves": "storage only: ONNX Runtime rebuilds fp32 weights at load, so compute "
                         "and memory are unchanged"}


def kmeans_1d(values: np.ndarray, k: int, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """(codebook [k] float32, index per value) of Lloyd's k-means on scalars.

    Sorted values make each step a binary search against the midpoints between centroids.
    Empty clusters keep their previous centroid.
    """
    flat = values.astype(np.float64).ravel()
    low, high = float(flat.min()), float(flat.max())
    centroids = np.linspace(low, high, k) if high > low else np.full(k, low)
    order = np.sort(flat)
    for _ in range(iterations):
        bounds = np.searchsorted(order, (centroids[1:] + centroids[:-1]) / 2.0)
        edges = np.concatenate([[0], bounds, [len(order)]])
        sums = np.add.reduceat(order, edges[:-1]) if len(order) else np.zeros(k)
        counts = np.diff(edges)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        # reduceat returns the element itself for empty ranges; counts guards those above.
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            centroids = updated
            break
        centroids = updated
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    index = np.searchsorted(midpoints, flat).astype(np.uint8)
    return centroids.astype(np.float32), index


def pack_bits(index: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian bit stream of `bits`-wide values, plus one zero byte so the two-byte
    window read by the unpacking subgraph never runs off the end."""
    stream = ((index.astype(np.uint32)[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    packed = np.packbits(stream.ravel(), bitorder="little")  # ceil(n·bits / 8) bytes
    return np.concatenate([packed, np.zeros(1, dtype=np.uint8)])


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """numpy mirror of the ONNX subgraph (for tests): value i sits at bit i·bits."""
    pos = np.arange(n, dtype=np.int64) * bits
    byte, shift = pos // 8, (pos % 8).astype(np.uint32)
    word = packed[byte].astype(np.uint32) + (packed[byte + 1].astype(np.uint32) << 8)
    return ((word >> shift) % (1 << bits)).astype(np.int64)


def _const(graph: list[TensorProto], name: str, value: np.ndarray) -> str:
    graph.append(numpy_helper.from_array(value, name))
    return name


def _rebuild_nodes(name: str, shape: tuple[int, ...], bits: int, inits: list[TensorProto]) -> list[onnx.NodeProto]:
    """Nodes computing tensor `name` from its packed indices and codebook (all constants)."""
    p = f"{name}__shared"
    n = int(np.prod(shape))
    c = lambda suffix, value: _const(inits, f"{p}_{suffix}", np.asarray(value))  # noqa: E731
    make = helper.make_node
    return [
        make("Range", [c("zero", np.int64(0)), c("count", np.int64(n)), c("one", np.int64(1))],
             [f"{p}_pos"]),
        make("Mul", [f"{p}_pos", c("bits", np.int64(bits))], [f"{p}_bitpos"]),
        make("Div", [f"{p}_bitpos", c("eight", np.int64(8))], [f"{p}_byte"]),
        make("Mod", [f"{p}_bitpos", f"{p}_eight"], [f"{p}_shift64"]),
        make("Add", [f"{p}_byte", f"{p}_one"], [f"{p}_byte1"]),
        make("Gather", [f"{name}__shared_indices", f"{p}_byte"], [f"{p}_lo8"], axis=0),
        make("Gather", [f"{name}__shared_indices", f"{p}_byte1"], [f"{p}_hi8"], axis=0),
        make("Cast", [f"{p}_lo8"], [f"{p}_lo"], to=TensorProto.UINT32),
        make("Cast", [f"{p}_hi8"], [f"{p}_hi"], to=TensorProto.UINT32),
        make("BitShift", [f"{p}_hi", c("eight32", np.uint32(8))], [f"{p}_hi_up"], direction="LEFT"),
        make("Add", [f"{p}_lo", f"{p}_hi_up"], [f"{p}_word"]),
        make("Cast", [f"{p}_shift64"], [f"{p}_shift"], to=TensorProto.UINT32),
        make("BitShift", [f"{p}_word", f"{p}_shift"], [f"{p}_down"], direction="RIGHT"),
        make("Mod", [f"{p}_down", c("levels", np.uint32(1 << bits))], [f"{p}_code"]),
        make("Cast", [f"{p}_code"], [f"{p}_index"], to=TensorProto.INT64),
        make("Gather", [f"{name}__shared_codebook", f"{p}_index"], [f"{p}_flat"], axis=0),
        make("Reshape", [f"{p}_flat", f"{name}__shared_shape"], [name]),
    ]


def share_weights(source: Path, target: Path, options: ShareOptions) -> dict[str, Any]:
    """Write `target`: `source` with every large float weight matrix shared. Returns the per-matrix
    record (shape, bytes before and after, relative error) for the recipe."""
    if not 1 <= options.bits <= 8:
        raise ValueError("bits must be 1..8")
    model = onnx.load(str(source))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ValueError(f"weight sharing needs ONNX opset >= {MIN_OPSET}, the model has {opset}")
    graph = model.graph
    outputs = {o.name for o in graph.output}
    new_nodes: list[onnx.NodeProto] = []
    kept: list[TensorProto] = []
    added: list[TensorProto] = []
    matrices: dict[str, Any] = {}
    for tensor in graph.initializer:
        size = int(np.prod(tensor.dims, dtype=np.int64))
        if (tensor.data_type != TensorProto.FLOAT or len(tensor.dims) < 2 or size < options.min_elements
                or tensor.name in outputs):
            kept.append(tensor)
            continue
        weights = numpy_helper.to_array(tensor)
        codebook, index = kmeans_1d(weights, 2 ** options.bits, options.iterations)
        packed = pack_bits(index, options.bits)
        added += [numpy_helper.from_array(packed, f"{tensor.name}__shared_indices"),
                  numpy_helper.from_array(codebook, f"{tensor.name}__shared_codebook"),
                  numpy_helper.from_array(np.asarray(weights.shape, dtype=np.int64),
                                          f"{tensor.name}__shared_shape")]
        new_nodes += _rebuild_nodes(tensor.name, weights.shape, options.bits, added)
        rebuilt = codebook[index].reshape(weights.shape)
        error = float(np.linalg.norm(rebuilt - weights) / max(np.linalg.norm(weights), 1e-12))
        matrices[tensor.name] = {"shape": list(weights.shape), "bytes_before": weights.nbytes,
                                 "bytes_after": packed.nbytes + codebook.nbytes + 8 * weights.ndim,
                                 "centroids_used": int(len(np.unique(index))),
                                 "relative_error": round(error, 6)}
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    onnx.checker.check_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(target))
    return matrices
