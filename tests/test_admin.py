"""CompressionService on a real server: live routing (split, auto, shadow), on-the-fly int8, reloads."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from server_process import ServerProcess, start_server
from tiny_repository import FEATURES, swap_variant, write_tiny_repository
from tritonclient.utils import InferenceServerException

from modelrepo.schema import validate
from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc


def _input(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


@pytest.fixture()
def server(tmp_path: Path):
    write_tiny_repository(tmp_path)
    process = start_server(tmp_path, "--poll-seconds", "0.5")
    yield process
    process.stop()


def _admin(server: ServerProcess) -> cpb_grpc.CompressionServiceStub:
    return cpb_grpc.CompressionServiceStub(grpc.insecure_channel(server.url))


def test_split_80_20_over_1000_requests(server: ServerProcess) -> None:
    admin = _admin(server)
    routing = admin.SetRouting(cpb.SetRoutingRequest(routing=cpb.Routing(
        model="tiny", policy="split", weights={"teacher": 80, "small": 20})), timeout=10)
    assert routing.policy == "split"
    client = triton.InferenceServerClient(server.url)
    x = _input(np.ones((1, FEATURES), np.float32))
    counts = Counter(client.infer("tiny", [x]).get_response().model_version for _ in range(1000))
    assert abs(counts["small"] / 1000 - 0.20) <= 0.05, counts
    # The policy was written to the manifest, so it survives a restart.
    manifest = json.loads((Path(server.process.args[4]) / "tiny" / "manifest.json").read_text())
    assert manifest["routing"]["policy"] == "split"


def test_bad_routing_is_refused_and_changes_nothing(server: ServerProcess) -> None:
    admin = _admin(server)
    with pytest.raises(grpc.RpcError) as err:
        admin.SetRouting(cpb.SetRoutingRequest(routing=cpb.Routing(model="tiny", policy="fixed", variant="int4")), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "int4" in err.value.details()
    assert admin.GetRouting(cpb.GetRoutingRequest(model="tiny"), timeout=10).variant == "teacher"


def test_auto_and_shadow_agreement(server: ServerProcess) -> None:
    admin = _admin(server)
    routing = admin.SetRouting(cpb.SetRoutingRequest(routing=cpb.Routing(
        model="tiny", policy="auto", max_drop=0.01, shadow_fraction=1.0)), timeout=10)
    assert routing.chosen == "small"  # faster, and its accuracy drop (0.5 points) is within the budget
    client = triton.InferenceServerClient(server.url)
    x = np.random.default_rng(3).normal(size=(4, FEATURES)).astype(np.float32)
    for _ in range(20):
        assert client.infer("tiny", [_input(x)]).get_response().model_version == "small"
    deadline = time.monotonic() + 10
    line = ""
    while time.monotonic() < deadline:
        line = next((m for m in server.metrics().splitlines()
                     if m.startswith('slimserve_shadow_agreement{model="tiny",variant="small"}')), "")
        if line:
            break
        time.sleep(0.2)
    assert line, "no shadow agreement in /metrics"
    assert 0.0 <= float(line.split()[-1]) <= 1.0


def test_on_the_fly_int8_under_load_with_zero_failures(server: ServerProcess) -> None:
    admin = _admin(server)
    failures: list[str] = []
    served = Counter()
    stop = threading.Event()

    def load() -> None:
        client = triton.InferenceServerClient(server.url)
        x = _input(np.ones((2, FEATURES), np.float32))
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                served[client.infer("tiny", [x]).get_response().model_version] += 1
            except InferenceServerException as exc:
                failures.append(f"{exc.status()} {exc.message()}")

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        job = admin.CreateVariant(cpb.CreateVariantRequest(
            model="tiny", name="int8", recipe="int8_static", params={"calibration_samples": "64"}), timeout=10)
        states = [j for j in admin.WatchJob(cpb.GetJobRequest(id=job.id), timeout=120)]
        final = states[-1]
        assert final.state == cpb.Job.SUCCEEDED, final.message
        assert final.result.quality["agreement"] > 0.9
        # Servable at once, without a restart, and listed with its figures.
        client = triton.InferenceServerClient(server.url)
        x = np.random.default_rng(5).normal(size=(3, FEATURES)).astype(np.float32)
        out = client.infer("tiny", [_input(x)], model_version="int8").as_numpy("logits")
        folder = Path(server.process.args[4]) / "tiny"
        expected = ort.InferenceSession(str(folder / "int8" / "model.onnx")).run(None, {"input": x})[0]
        np.testing.assert_allclose(out, expected, atol=1e-5)
        listed = {v.name: v for v in admin.ListVariants(cpb.ListVariantsRequest(model="tiny"), timeout=10).variants}
        assert listed["int8"].loaded and listed["int8"].bytes > 0
        assert not list(folder.glob(".*partial*")), "staging folder left behind"
        # The entry the job wrote is a full one: the manifest still passes the one validate().
        manifest = json.loads((folder / "manifest.json").read_text())
        assert validate(manifest) == []
        entry = manifest["variants"]["int8"]
        assert {"batch_1", "batch_32"} <= entry["latency"].keys() and entry["recipe"]["params"]["budget_met"]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert sum(served.values()) > 0 and not failures, failures[:3]


def test_failed_job_leaves_repository_as_it_was(server: ServerProcess) -> None:
    admin = _admin(server)
    folder = Path(server.process.args[4]) / "tiny"
    before = (folder / "manifest.json").read_text()
    (folder / "calibration.npz").unlink()  # static int8 now has nothing to calibrate on
    job = admin.CreateVariant(cpb.CreateVariantRequest(model="tiny", name="int8", recipe="int8_static"), timeout=10)
    final = list(admin.WatchJob(cpb.GetJobRequest(id=job.id), timeout=120))[-1]
    assert final.state == cpb.Job.FAILED and "calibration.npz" in final.message
    assert (folder / "manifest.json").read_text() == before
    assert not (folder / "int8").exists() and not list(folder.glob(".*partial*"))
    with pytest.raises(grpc.RpcError) as err:
        admin.CreateVariant(cpb.CreateVariantRequest(model="tiny", name="x", recipe="int4"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "int8_dynamic" in err.value.details()


def test_poll_swaps_in_a_changed_variant(server: ServerProcess, tmp_path: Path) -> None:
    """Replace `small` on disk with other weights (new file + manifest): the server serves the new one."""
    folder = Path(server.process.args[4]) / "tiny"
    client = triton.InferenceServerClient(server.url)
    x = np.ones((1, FEATURES), np.float32)
    before = client.infer("tiny", [_input(x)], model_version="small").as_numpy("logits")
    other = write_tiny_repository(tmp_path / "other", hidden=16)
    swap_variant(folder, other)
    expected = ort.InferenceSession(str(other / "small" / "model.onnx")).run(None, {"input": x})[0]
    deadline = time.monotonic() + 15
    got = before
    while time.monotonic() < deadline:
        got = client.infer("tiny", [_input(x)], model_version="small").as_numpy("logits")
        if not np.allclose(got, before):
            break
        time.sleep(0.2)
    np.testing.assert_allclose(got, expected, atol=1e-5)
