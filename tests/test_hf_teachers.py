"""Hugging Face folders as teachers, end to end: a tiny sentence-transformers encoder and tiny
BERT-family classifiers (made here from `transformers` configs, never from a hub) are built into
int8, distilled, pruned and distilled+int8, served by a real server and called with text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_process import start_server  # noqa: E402
from tiny_hf import make_classifier, make_sentence_encoder, write_labelled  # noqa: E402

from compression.build import main  # noqa: E402
from modelrepo.schema import validate  # noqa: E402

VARIANTS = ("teacher", "int8", "distilled", "pruned", "distilled+int8")
CORPUS = Path(__file__).resolve().parent.parent / "compression" / "corpus" / "wordnet_examples.txt"
FAST = ["--quiet", "--variants", "int8,distilled,pruned,distilled+int8", "--text-epochs", "2",
        "--prune-text-epochs", "1", "--latency-runs", "3,2,2,2"]
ASKED = ["A man is playing a guitar.", "the cat sat on the mat", "Prices rose sharply last year.",
         "he pounded it to a pulp"]


def sentences(count: int) -> list[str]:
    return CORPUS.read_text(encoding="utf-8").splitlines()[1000:1000 + count]


@torch.no_grad()
def hf_outputs(folder: Path, texts: list[str], task: str) -> np.ndarray:
    """The folder's model run in PyTorch by transformers itself (the reference the served teacher must equal)."""
    from tokenizers import Tokenizer
    from transformers import AutoModel, AutoModelForSequenceClassification

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    rows = []
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModel
    model = auto.from_pretrained(str(folder), local_files_only=True).eval()
    for text in texts:  # one at a time: no padding involved in the reference
        ids = torch.tensor([tokenizer.encode(text).ids])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        if task == "classification":
            rows.append(out.logits[0].numpy())
        else:
            vector = out.last_hidden_state[0].mean(dim=0)
            rows.append((vector / vector.norm()).numpy())
    return np.stack(rows)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf")
    out = root / "repo"
    encoder = make_sentence_encoder(root / "encoder")
    (root / "sentences.txt").write_text("\n".join(sentences(500)) + "\n", encoding="utf-8")
    assert main(["--out", str(out), "--teacher", str(encoder), "--data", str(root / "sentences.txt"), *FAST]) == 0
    for family in ("distilbert", "roberta"):
        folder = make_classifier(root / family, family=family)
        texts = sentences(500)
        # Labels as names, from the teacher itself: accuracy and agreement then mean something.
        top1 = hf_outputs(folder, texts, "classification").argmax(axis=1)
        names = json.loads((folder / "config.json").read_text())["id2label"]
        data = write_labelled(root / f"{family}.jsonl", [(t, names[str(y)]) for t, y in zip(texts, top1, strict=True)])
        assert main(["--out", str(out), "--teacher", str(folder), "--data", str(data), *FAST]) == 0
    return out


@pytest.mark.parametrize("model", ["encoder", "distilbert", "roberta"])
def test_manifest_is_valid_and_names_the_text_contract(repo: Path, model: str) -> None:
    folder = repo / model
    manifest = json.loads((folder / "manifest.json").read_text())
    assert validate(manifest) == []
    assert set(manifest["variants"]) == set(VARIANTS)
    assert [t["name"] for t in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["tokenizer"]["text_input"] == "text" and (folder / "tokenizer.json").is_file()
    assert manifest["tokenizer"]["pad_id"] == (1 if model == "roberta" else 0)
    assert len((folder / "heldout.txt").read_text().splitlines()) == manifest["data"]["splits"]["test"]
    variants = manifest["variants"]
    if model == "encoder":
        assert manifest["task"] == "embedding" and manifest["outputs"][0]["name"] == "embedding"
        assert variants["int8"]["quality"]["cosine_mean"] >= 0.99
    else:
        assert manifest["task"] == "classification" and manifest["labels"] == ["negative", "positive"]
        assert variants["teacher"]["quality"]["accuracy"] == 1.0  # the labels are the teacher's answers
        assert variants["int8"]["quality"]["agreement"] >= 0.9
    # Structural compression really shrinks the files' parameters.
    assert variants["pruned"]["parameters"] < variants["teacher"]["parameters"]
    assert variants["distilled"]["parameters"] < variants["teacher"]["parameters"]
    assert len(variants["distilled"]["recipe"]["params"]["layers_from_teacher"]) < 4
    assert {"batch_1", "batch_1_long", "batch_32", "batch_32_short"} <= variants["int8"]["latency"].keys()


def test_every_variant_serves_text_and_the_teacher_equals_the_folders_model(repo: Path) -> None:
    server = start_server(repo)
    try:
        client = triton.InferenceServerClient(server.url)
        text = triton.InferInput("text", [len(ASKED)], "BYTES")
        text.set_data_from_numpy(np.array([s.encode() for s in ASKED], dtype=np.object_))
        for model, task, output in (("encoder", "embedding", "embedding"),
                                    ("distilbert", "classification", "logits"),
                                    ("roberta", "classification", "logits")):
            reference = hf_outputs(repo.parent / model, ASKED, task)
            for variant in VARIANTS:
                got = client.infer(model, [text], model_version=variant).as_numpy(output)
                assert got.shape == reference.shape, (model, variant)
                if variant != "teacher":
                    continue
                if task == "embedding":
                    cosine = (got * reference).sum(axis=1)
                    assert cosine.min() >= 0.999, cosine
                else:
                    np.testing.assert_allclose(got, reference, atol=1e-3, err_msg=model)
    finally:
        server.stop()
