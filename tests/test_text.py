"""Text models: strings in (BYTES `text`), tokenized on the server, embeddings out equal to in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from server_process import start_server
from tiny_text_repository import MAX_LENGTH, make_tokenizer, write_text_repository
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("text_repo")
    folder = write_text_repository(root)
    server = start_server(root)
    yield server, folder
    server.stop()


def _reference(folder: Path, sentences: list[str]) -> np.ndarray:
    tokenizer = make_tokenizer()
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(sentences)
    feeds = {"input_ids": np.array([e.ids for e in encodings], np.int64),
             "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}
    return ort.InferenceSession(str(folder / "teacher" / "model.onnx")).run(None, feeds)[0], feeds


def _text_input(sentences: list[str], shape: list[int] | None = None) -> triton.InferInput:
    array = np.array([s.encode() for s in sentences], dtype=np.object_)
    shape = shape or [len(sentences)]
    tensor = triton.InferInput("text", shape, "BYTES")
    tensor.set_data_from_numpy(array.reshape(shape))
    return tensor


def test_strings_in_embeddings_out(text_server) -> None:
    server, folder = text_server
    sentences = ["the cat sat on the mat", "a big red dog ran fast", "house",
                 "the small blue tree sat on a big red house near the slow dog"]  # longer than MAX_LENGTH
    expected, _ = _reference(folder, sentences)
    client = triton.InferenceServerClient(server.url)
    for shape in ([4], [4, 1]):
        got = client.infer("words", [_text_input(sentences, shape)]).as_numpy("embedding")
        np.testing.assert_allclose(got, expected, atol=1e-5)
    meta = client.get_model_metadata("words", as_json=True)
    assert {"name": "text", "datatype": "BYTES", "shape": ["-1"]} in meta["inputs"]


def test_token_ids_still_work(text_server) -> None:
    server, folder = text_server
    expected, feeds = _reference(folder, ["the dog sat", "a cat"])
    inputs = []
    for name, array in feeds.items():
        tensor = triton.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    got = triton.InferenceServerClient(server.url).infer("words", inputs).as_numpy("embedding")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bad_text_requests(text_server) -> None:
    server, _ = text_server
    client = triton.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException) as err:
        client.infer("words", [_text_input(["a", "b"], [1, 2])])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "one string per row" in err.value.message()
    bad = triton.InferInput("text", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as err:
        client.infer("words", [bad])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "UTF-8" in err.value.message()


def test_client_cli_sends_text(text_server, tmp_path: Path) -> None:
    import subprocess
    import sys

    from server_process import ROOT

    server, folder = text_server
    done = subprocess.run([sys.executable, "-m", "clients", "infer", "--url", server.url, "--model", "words",
                           "--text", "the cat sat", "--text", "a dog"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "output embedding FP32 [2, 16]" in done.stdout and "top class" not in done.stdout
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("the cat sat on the mat\na big dog\n\nred house\n")
    done = subprocess.run([sys.executable, "-m", "clients", "compare", "--url", server.url, "--model", "words",
                           "--data", str(corpus), "--metrics-url", server.metrics_url], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "teacher" in done.stdout and "1.0000" in done.stdout  # the teacher's cosine to itself


def test_batches_over_the_token_budget_run_in_slices(tmp_path: Path) -> None:
    """--max-tokens-per-run splits a long batch into runs of fewer rows; every row still gets its own
    embedding, in order."""
    from modelrepo.measure import rows_per_run

    folder = write_text_repository(tmp_path)
    sentences = ["the cat sat on the mat", "a big red dog ran fast", "house", "the slow dog",
                 "a small blue tree", "red house near the mat", "cat"]
    expected, feeds = _reference(folder, sentences)
    tokens = feeds["input_ids"].shape[1]
    assert rows_per_run(feeds, 2 * tokens) == 2  # 7 rows run as 2 + 2 + 2 + 1
    assert rows_per_run(feeds, 0) is None and rows_per_run(feeds, 7 * tokens) is None
    server = start_server(tmp_path, "--max-tokens-per-run", str(2 * tokens))
    try:
        got = triton.InferenceServerClient(server.url).infer("words", [_text_input(sentences)]).as_numpy("embedding")
    finally:
        server.stop()
    np.testing.assert_allclose(got, expected, atol=1e-5)
