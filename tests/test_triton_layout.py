"""A Triton-layout repository of ONNX files (config.pbtxt, numeric versions, a bare model.onnx) served as it is."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper
from server_process import ROOT, start_server
from tritonclient.utils import InferenceServerException
from waits import wait_until

from modelrepo import ManifestError
from modelrepo.onnxinfo import onnx_parameters
from modelrepo.pbtxt import parse_pbtxt
from modelrepo.schema import validate
from modelrepo.triton_layout import derive_manifest

FEATURES, HIDDEN, CLASSES = 16, 32, 4
CONFIG = """# a Triton config as users write them
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
"""


def mlp(seed: int) -> onnx.ModelProto:
    """Gemm + Relu + Gemm with fixed random weights and a dynamic batch axis."""
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (FEATURES, HIDDEN)), ("b1", (HIDDEN,)), ("w2", (HIDDEN, CLASSES)),
                                   ("b2", (CLASSES,)))]
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden"]), helper.make_node("Relu", ["hidden"], ["relu"]),
             helper.make_node("Gemm", ["relu", "w2", "b2"], ["logits"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_layout(root: Path) -> None:
    """repo/mlp/config.pbtxt + repo/mlp/{1,2}/model.onnx, and repo/bare/model.onnx; nothing else."""
    for version, seed in (("1", 1), ("2", 2)):
        (root / "mlp" / version).mkdir(parents=True)
        onnx.save(mlp(seed), str(root / "mlp" / version / "model.onnx"))
    (root / "mlp" / "config.pbtxt").write_text(CONFIG)
    (root / "bare").mkdir()
    onnx.save(mlp(3), str(root / "bare" / "model.onnx"))
    (root / "notes").mkdir()  # neither a manifest nor ONNX files: not a model, as before
    (root / "notes" / "README.txt").write_text("not a model")


def files_of(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def in_process(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]


def infer(client: triton.InferenceServerClient, model: str, x: np.ndarray, version: str = "") -> triton.InferResult:
    inputs = [triton.InferInput("input", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    return client.infer(model, inputs, model_version=version, client_timeout=30)


def check_served(url: str, root: Path) -> None:
    """Every version through tritonclient answers as the same file does in-process."""
    client = triton.InferenceServerClient(url)
    x = np.random.default_rng(7).standard_normal((5, FEATURES)).astype(np.float32)
    for model, version, file in (("mlp", "1", "mlp/1/model.onnx"), ("mlp", "2", "mlp/2/model.onnx"),
                                 ("mlp", "", "mlp/2/model.onnx"), ("bare", "", "bare/model.onnx"),
                                 ("bare", "1", "bare/model.onnx")):
        result = infer(client, model, x, version)
        np.testing.assert_allclose(result.as_numpy("logits"), in_process(root / file, x), rtol=1e-6, atol=1e-6)
        assert result.get_response().model_version == (version or ("2" if model == "mlp" else "1"))
    metadata = client.get_model_metadata("mlp", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("input", "FP32", ["-1", "16"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [("logits", "FP32", ["-1", "4"])]
    assert sorted(metadata["versions"]) == ["1", "2"]
    names = {m["name"] for m in client.get_model_repository_index(as_json=True)["models"]}
    assert names == {"mlp", "bare"}


def test_triton_repository_is_served_unchanged_and_gets_its_measured_manifest(tmp_path: Path) -> None:
    write_layout(tmp_path)
    before = files_of(tmp_path)
    server = start_server(tmp_path)
    try:
        check_served(server.url, tmp_path)
    finally:
        server.stop()
    after = files_of(tmp_path)
    assert {k: v for k, v in after.items() if not k.endswith("manifest.json")} == before  # ONNX and config untouched
    manifest = json.loads((tmp_path / "mlp" / "manifest.json").read_text())
    assert validate(manifest) == []
    assert manifest["task"] == "classification" and manifest["default_variant"] == "2"
    assert manifest["routing"] == {"policy": "fixed", "variant": "2"}
    for version in ("1", "2"):
        entry = manifest["variants"][version]
        path = tmp_path / "mlp" / version / "model.onnx"
        assert entry["file"] == f"{version}/model.onnx"
        assert entry["sha256"] == before[f"mlp/{version}/model.onnx"] and entry["bytes"] == path.stat().st_size
        assert entry["parameters"] == onnx_parameters(path) == FEATURES * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES
        assert entry["quality"] == {}  # no held-out data: nothing measured, nothing invented
        assert entry["latency"]["batch_1"]["p50_ms"] > 0 and entry["latency"]["batch_1"]["runs"] >= 3
    bare = json.loads((tmp_path / "bare" / "manifest.json").read_text())
    assert list(bare["variants"]) == ["1"] and bare["variants"]["1"]["file"] == "model.onnx"
    assert not (tmp_path / "notes" / "manifest.json").exists()

    # A restart on the same repository serves the same and leaves the manifest as it was (nothing re-measured).
    written = (tmp_path / "mlp" / "manifest.json").read_bytes()
    server = start_server(tmp_path)
    try:
        check_served(server.url, tmp_path)
    finally:
        server.stop()
    assert (tmp_path / "mlp" / "manifest.json").read_bytes() == written


def _unprivileged() -> tuple[str, ...]:
    """How to run the server so it cannot write a root-owned folder: as nobody when we are root."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop privileges")
    drop = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    probe = subprocess.run([*drop, sys.executable, "-c", "import server.app"], capture_output=True, timeout=60, cwd=ROOT)
    if probe.returncode != 0:
        pytest.skip("the checkout or its venv is not readable by an unprivileged user here")
    return drop


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """Not pytest's tmp_path: its parents are private to us, and the server may run as another user."""
    root = Path(tempfile.mkdtemp(prefix="slimserve-triton-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for folder in [root, *root.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o755)
        shutil.rmtree(root)


def test_read_only_repository_is_served_with_the_manifest_in_memory(shared_tmp: Path) -> None:
    write_layout(shared_tmp)
    prefix = _unprivileged()
    for folder in [shared_tmp, *shared_tmp.rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o555)  # as root this stops nobody; the server then runs as nobody (prefix)
    before = files_of(shared_tmp)
    server = start_server(shared_tmp, prefix=prefix)
    try:
        check_served(server.url, shared_tmp)
    finally:
        server.stop()
    assert files_of(shared_tmp) == before  # no manifest written, nothing else either
    assert "manifest kept in memory" in "".join(server.lines)


def _state(client: triton.InferenceServerClient, name: str) -> dict:
    models = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    return models.get(name, {})


def _hostile_external(path: Path) -> None:
    """An ONNX file whose weights claim to live outside its folder."""
    model = mlp(4)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../../etc/hostname")
    path.write_bytes(model.SerializeToString())


def test_bad_config_or_hostile_onnx_makes_only_that_model_unavailable_and_the_poll_follows(tmp_path: Path) -> None:
    write_layout(tmp_path)
    (tmp_path / "wrongtype" / "1").mkdir(parents=True)
    onnx.save(mlp(5), str(tmp_path / "wrongtype" / "1" / "model.onnx"))
    (tmp_path / "wrongtype" / "config.pbtxt").write_text(CONFIG.replace("mlp", "wrongtype").replace(
        'name: "input", data_type: TYPE_FP32', 'name: "input", data_type: TYPE_INT64'))
    (tmp_path / "garbled" / "1").mkdir(parents=True)
    onnx.save(mlp(6), str(tmp_path / "garbled" / "1" / "model.onnx"))
    (tmp_path / "garbled" / "config.pbtxt").write_text('name: "garbled"\ninput [ { name: "input" ')
    (tmp_path / "hostile" / "1").mkdir(parents=True)
    (tmp_path / "hostile" / "1" / "model.onnx").write_bytes(b"\x08\xff\xff\xff\xff\x0f" + os.urandom(256))
    (tmp_path / "escape" / "1").mkdir(parents=True)
    _hostile_external(tmp_path / "escape" / "1" / "model.onnx")
    server = start_server(tmp_path, "--poll-seconds", "0.2")
    try:
        client = triton.InferenceServerClient(server.url)
        x = np.ones((1, FEATURES), np.float32)
        np.testing.assert_allclose(infer(client, "mlp", x).as_numpy("logits"),
                                   in_process(tmp_path / "mlp" / "2" / "model.onnx", x), rtol=1e-6, atol=1e-6)
        reasons = {
            "wrongtype": "config.pbtxt input 'input' has data_type TYPE_INT64 but the ONNX graph has FP32",
            "garbled": "garbled/config.pbtxt: ends in the middle of a message",
            "hostile": "not a readable ONNX file",
            "escape": "outside its version folder; refusing to load it",
        }
        for name, reason in reasons.items():
            state = _state(client, name)
            assert state.get("state") == "UNAVAILABLE" and reason in state.get("reason", ""), (name, state)
            assert "\n" not in state["reason"]
            with pytest.raises(InferenceServerException) as caught:
                infer(client, name, x)
            assert caught.value.status() == "StatusCode.UNAVAILABLE"
            assert not (tmp_path / name / "manifest.json").exists()

        # Fixing the config is picked up by the poll; so is a new version of a served model.
        (tmp_path / "wrongtype" / "config.pbtxt").write_text(CONFIG.replace("mlp", "wrongtype"))
        (tmp_path / "mlp" / "3").mkdir()
        onnx.save(mlp(8), str(tmp_path / "mlp" / "3" / "model.onnx"))
        wait_until(lambda: _state(client, "wrongtype").get("state") == "READY")
        wait_until(lambda: "3" in client.get_model_metadata("mlp", as_json=True)["versions"])
        np.testing.assert_allclose(infer(client, "wrongtype", x).as_numpy("logits"),
                                   in_process(tmp_path / "wrongtype" / "1" / "model.onnx", x), rtol=1e-6, atol=1e-6)
        result = infer(client, "mlp", x)
        assert result.get_response().model_version == "3"
        np.testing.assert_allclose(result.as_numpy("logits"), in_process(tmp_path / "mlp" / "3" / "model.onnx", x),
                                   rtol=1e-6, atol=1e-6)
        manifest = json.loads((tmp_path / "mlp" / "manifest.json").read_text())
        assert sorted(manifest["variants"]) == ["1", "2", "3"] and manifest["default_variant"] == "3"
        assert server.process.poll() is None and "Traceback" not in "".join(server.lines)
    finally:
        server.stop()


def test_config_pbtxt_is_read_as_protobuf_text_format() -> None:
    fields = parse_pbtxt(CONFIG + 'version_policy: { specific { versions: [1, 2] } }\n', "config.pbtxt")
    assert fields["name"] == ["mlp"] and fields["max_batch_size"] == [8]
    assert fields["input"] == [{"name": ["input"], "data_type": ["TYPE_FP32"], "dims": [16]}]
    assert fields["output"][0]["dims"] == [4]
    assert fields["version_policy"] == [{"specific": [{"versions": [1, 2]}]}]
    for text, message in (('name "x"', "field 'name' needs ':'"), ("x: @", "line 1: unexpected '@'"),
                          ("{" * 10_000, "expected a field name")):
        with pytest.raises(ManifestError, match=message):
            parse_pbtxt(text, "config.pbtxt")


@pytest.mark.parametrize("config, message", [
    (CONFIG.replace('name: "mlp"', 'name: "other"'), "differs from the folder name 'mlp'"),
    (CONFIG.replace("dims: [ 16 ]", "dims: [ 15 ]"), "has shape [-1, 15] (batch axis included) but the ONNX graph has [-1, 16]"),
    (CONFIG.replace('name: "input"', 'name: "x"'), "config.pbtxt input 'x' is not in the ONNX graph"),
    (CONFIG.replace("max_batch_size: 8", "max_batch_size: 0"), "has shape [16] (batch axis included) but the ONNX graph has [-1, 16]"),
    (CONFIG.replace("onnxruntime_onnx", "tensorrt_plan"), "only ONNX models (onnxruntime_onnx) are"),
])
def test_config_that_disagrees_with_the_graph_is_one_clear_line(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "mlp" / "1").mkdir(parents=True)
    onnx.save(mlp(1), str(tmp_path / "mlp" / "1" / "model.onnx"))
    (tmp_path / "mlp" / "config.pbtxt").write_text(config)
    with pytest.raises(ManifestError, match=re.escape(message)) as caught:
        derive_manifest(tmp_path / "mlp")
    assert "\n" not in str(caught.value)


def test_version_policy_and_task_rule(tmp_path: Path) -> None:
    for version in ("1", "2", "3"):
        (tmp_path / "mlp" / version).mkdir(parents=True)
        onnx.save(mlp(int(version)), str(tmp_path / "mlp" / version / "model.onnx"))
    (tmp_path / "mlp" / "config.pbtxt").write_text(CONFIG + "version_policy: { latest { num_versions: 2 } }\n")
    manifest = derive_manifest(tmp_path / "mlp")
    assert sorted(manifest["variants"]) == ["2", "3"] and manifest["default_variant"] == "3"
    # An output named like an embedding makes an embedding model.
    model = mlp(1)
    model.graph.output[0].name = "embedding"
    model.graph.node[-1].output[0] = "embedding"
    (tmp_path / "enc").mkdir()
    onnx.save(model, str(tmp_path / "enc" / "model.onnx"))
    assert derive_manifest(tmp_path / "enc")["task"] == "embedding"


def test_rederive_keeps_measurements_routing_and_job_variants(tmp_path: Path) -> None:
    """Derived again (a poll, a restart, another replica): unchanged files keep their entries, so the manifest
    is not rewritten; a routing set by SetRouting and a variant an on-the-fly job added stay."""
    write_layout(tmp_path)
    folder = tmp_path / "mlp"
    first = derive_manifest(folder)
    assert derive_manifest(folder, json.loads(json.dumps(first))) == first
    (folder / "int8").mkdir()
    shutil.copy(folder / "2" / "model.onnx", folder / "int8" / "model.onnx")
    changed = json.loads(json.dumps(first))
    changed["variants"]["int8"] = {**first["variants"]["2"], "kind": "int8", "parent": "2", "file": "int8/model.onnx"}
    changed["routing"] = {"policy": "split", "weights": {"1": 1, "int8": 1}}
    again = derive_manifest(folder, changed)
    assert again == changed and validate(again) == []
    (folder / "1" / "model.onnx").unlink()
    (folder / "1").rmdir()
    after = derive_manifest(folder, changed)  # version 1 is gone: the split naming it is dropped
    assert sorted(after["variants"]) == ["2", "int8"] and after["routing"] == {"policy": "fixed", "variant": "2"}
