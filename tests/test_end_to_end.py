"""The whole mission: build the default teacher's variants, serve them, call them with tritonclient."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from server_process import ROOT, ServerProcess, start_server
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def digits_server(digits_repo: Path):
    server = start_server(digits_repo)
    yield server
    server.stop()


def _input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def test_every_variant_through_the_server_equals_onnx_runtime(digits_repo: Path, digits_server: ServerProcess) -> None:
    folder = digits_repo / "digits"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"teacher", "distilled", "pruned", "int8"} <= set(manifest["variants"])
    x = np.load(folder / "heldout.npz")["input"][:32].astype(np.float32)
    client = triton.InferenceServerClient(digits_server.url)
    for variant, entry in manifest["variants"].items():
        result = client.infer("digits", [_input(x)], model_version=variant)
        session = ort.InferenceSession(str(folder / entry["file"]), providers=["CPUExecutionProvider"])
        expected = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5, rtol=1e-5)
        assert result.get_response().model_version == variant


def test_bad_inputs_get_clear_codes(digits_server: ServerProcess) -> None:
    client = triton.InferenceServerClient(digits_server.url)
    cases = [
        (lambda: client.infer("digits", [_input(np.zeros((1, 64), np.float32))], model_version="int4"), "NOT_FOUND"),
        (lambda: client.infer("nope", [_input(np.zeros((1, 64), np.float32))]), "NOT_FOUND"),
        (lambda: client.infer("digits", [_input(np.zeros((1, 64), np.float32), name="pixels")]), "INVALID_ARGUMENT"),
        (lambda: client.infer("digits", [_input(np.zeros((1, 64), np.int64), datatype="INT64")]), "INVALID_ARGUMENT"),
        (lambda: client.infer("digits", [_input(np.zeros((1, 63), np.float32))]), "INVALID_ARGUMENT"),
    ]
    for call, code in cases:
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == f"StatusCode.{code}", err.value.message()
    assert client.is_server_live() and client.is_model_ready("digits")


def test_metrics_show_every_variant(digits_repo: Path, digits_server: ServerProcess) -> None:
    manifest = json.loads((digits_repo / "digits" / "manifest.json").read_text())
    client = triton.InferenceServerClient(digits_server.url)
    for variant in manifest["variants"]:
        client.infer("digits", [_input(np.zeros((1, 64), np.float32))], model_version=variant)
    text = digits_server.metrics()
    for variant in manifest["variants"]:
        labels = f'model="digits",variant="{variant}"'
        assert f"slimserve_compute_duration_seconds_count{{{labels}}}" in text
        assert f"slimserve_variant_memory_bytes{{{labels}}}" in text
        assert f'slimserve_variant_quality{{metric="accuracy",{labels}}}' in text


def test_compare_cli_prints_every_variant(digits_repo: Path, digits_server: ServerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clients", "compare", "--url", digits_server.url, "--model", "digits",
         "--data", str(digits_repo / "digits" / "heldout.npz"), "--samples", "64",
         "--metrics-url", digits_server.metrics_url],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for variant in ("teacher", "distilled", "pruned", "int8"):
        assert variant in done.stdout
