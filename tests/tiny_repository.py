"""Writes a small, real model repository (ONNX files built with onnx.helper) for fast server tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelrepo.schema import validate

FEATURES, CLASSES = 8, 3


def linear_model(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """logits = input @ weight + bias, with a dynamic batch axis."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp_model(hidden: int, seed: int) -> onnx.ModelProto:
    """A two-layer MLP (input -> hidden ReLU -> logits): slow enough per row that requests queue up."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(FEATURES, hidden)) / np.sqrt(FEATURES)).astype(np.float32)
    w2 = (rng.normal(size=(hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    w3 = (rng.normal(size=(hidden, CLASSES)) / np.sqrt(hidden)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W1"], ["h1"]), helper.make_node("Relu", ["h1"], ["a1"]),
         helper.make_node("MatMul", ["a1", "W2"], ["h2"]), helper.make_node("Relu", ["h2"], ["a2"]),
         helper.make_node("MatMul", ["a2", "W3"], ["logits"])],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(w, n) for w, n in ((w1, "W1"), (w2, "W2"), (w3, "W3"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_tiny_repository(root: Path, name: str = "tiny", routing: dict | None = None, hidden: int = 0) -> Path:
    """Two variants of a classifier, `teacher` and a perturbed `small`; linear unless `hidden` > 0.

    Returns the model folder.
    """
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    bias = rng.normal(size=(CLASSES,)).astype(np.float32)
    folder = root / name
    variants = {}
    for vname, w, latency, accuracy in (
        ("teacher", weight, 0.2, 0.95),
        ("small", weight + 0.05 * rng.normal(size=weight.shape).astype(np.float32), 0.1, 0.945),
    ):
        path = folder / vname / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(mlp_model(hidden, seed=len(vname)) if hidden else linear_model(w, bias), path)
        data = path.read_bytes()
        variants[vname] = {
            "kind": vname,
            "parent": None if vname == "teacher" else "teacher",
            "recipe": {"name": "test", "params": {}},
            "file": f"{vname}/model.onnx",
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "parameters": int(w.size + bias.size),
            "macs": int(w.size),
            "quality": {"accuracy": accuracy, "agreement": 1.0 if vname == "teacher" else 0.97},
            "latency": {"threads": 1, "cpu": "test",
                        "batch_1": {"p50_ms": latency, "p95_ms": latency * 2, "runs": 10},
                        "batch_32": {"p50_ms": latency * 8, "p95_ms": latency * 16, "runs": 10}},
            "build_seconds": 0.0,
        }
    manifest = {
        "schema_version": 1,
        "name": name,
        "task": "classification",
        "created": "2026-01-01T00:00:00Z",
        "host": {"cpu": "test", "cores": 1, "int8_features": []},
        "tools": {"python": "3.11", "onnx": onnx.__version__, "onnxruntime": "test", "slimserve": "test"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, CLASSES]}],
        "primary_metric": "accuracy",
        "default_variant": "teacher",
        "routing": routing or {"policy": "fixed", "variant": "teacher"},
        "variants": variants,
    }
    # Held-out and calibration sets, as compression.build writes them; labels = the linear teacher's answer.
    x = rng.normal(size=(256, FEATURES)).astype(np.float32)
    np.savez(folder / "heldout.npz", x=x[:128], y=(x[:128] @ weight + bias).argmax(axis=1))
    np.savez(folder / "calibration.npz", x=x[128:])
    manifest["data"] = {"name": "random", "seed": 0, "splits": {"test": 128},
                        "heldout_file": "heldout.npz", "calibration_file": "calibration.npz"}
    assert validate(manifest) == [], validate(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def swap_variant(folder: Path, other: Path, variant: str = "small") -> None:
    """Replace `variant` in model `folder` by the one in `other` as an operator would on a live server:
    the file first (atomic rename), then the manifest's sha256 (atomic rename)."""
    import shutil

    shutil.copy(other / variant / "model.onnx", folder / variant / "model.onnx.new")
    (folder / variant / "model.onnx.new").replace(folder / variant / "model.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["variants"][variant]["sha256"] = json.loads((other / "manifest.json").read_text())["variants"][variant]["sha256"]
    (folder / "manifest.json.new").write_text(json.dumps(manifest))
    (folder / "manifest.json.new").replace(folder / "manifest.json")
