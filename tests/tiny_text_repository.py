"""A small real text model: word-level tokenizer + ONNX mean-of-embeddings encoder, for server text tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

WORDS = "the a cat dog sat on mat ran fast slow big small red blue house tree".split()
DIM = 16
MAX_LENGTH = 8


def make_tokenizer() -> Tokenizer:
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    return tokenizer


def encoder_model(table: np.ndarray) -> onnx.ModelProto:
    """embedding = sum(E[ids] * mask) / sum(mask): a masked mean, so padding does not change it."""
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["vectors"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["vectors", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["safe"]),
        helper.make_node("Div", ["total", "safe"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[numpy_helper.from_array(table, "E"),
                     numpy_helper.from_array(np.array([2], np.int64), "axis2"),
                     numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                     numpy_helper.from_array(np.array([1.0], np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_text_repository(root: Path, name: str = "words") -> Path:
    folder = root / name
    (folder / "teacher").mkdir(parents=True, exist_ok=True)
    table = np.random.default_rng(0).normal(size=(len(WORDS) + 2, DIM)).astype(np.float32)
    path = folder / "teacher" / "model.onnx"
    onnx.save(encoder_model(table), path)
    make_tokenizer().save(str(folder / "tokenizer.json"))
    data = path.read_bytes()
    manifest = {
        "schema_version": 1, "name": name, "task": "embedding",
        "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                   {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, DIM]}],
        "tokenizer": {"file": "tokenizer.json", "max_length": MAX_LENGTH, "text_input": "text"},
        "primary_metric": "cosine_mean", "default_variant": "teacher",
        "routing": {"policy": "fixed", "variant": "teacher"},
        "variants": {"teacher": {"kind": "teacher", "parent": None, "file": "teacher/model.onnx",
                                 "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                 "parameters": int(table.size), "quality": {"cosine_mean": 1.0}}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder
