"""A real server process driven by tritonclient.grpc: results, error codes, metrics, health, shutdown."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_process import ROOT, ServerProcess, start_server
from tiny_repository import FEATURES, write_tiny_repository
from tritonclient.utils import InferenceServerException


def _input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _status(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


def test_every_variant_equals_onnx_runtime_in_process(tiny_server: ServerProcess, tiny_repo: Path) -> None:
    client = triton.InferenceServerClient(tiny_server.url)
    x = np.random.default_rng(1).normal(size=(5, FEATURES)).astype(np.float32)
    for variant in ("teacher", "small"):
        result = client.infer("tiny", [_input(x)], model_version=variant)
        expected = ort.InferenceSession(str(tiny_repo / "tiny" / variant / "model.onnx")).run(None, {"input": x})[0]
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
        assert result.get_response().model_version == variant
    # An empty version applies the routing policy (fixed: teacher).
    assert client.infer("tiny", [_input(x)]).get_response().model_version == "teacher"


def test_metadata_config_and_index(tiny_server: ServerProcess) -> None:
    client = triton.InferenceServerClient(tiny_server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny", "small") and not client.is_model_ready("tiny", "int4")
    meta = client.get_model_metadata("tiny", as_json=True)
    assert sorted(meta["versions"]) == ["small", "teacher"]
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", str(FEATURES)]}
    config = client.get_model_config("tiny", as_json=True)["config"]
    assert config["max_batch_size"] > 0 and config["input"][0]["dims"] == [str(FEATURES)]
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} == {("tiny", "teacher", "READY"), ("tiny", "small", "READY")}
    assert "statistics" in client.get_server_metadata(as_json=True)["extensions"]


@pytest.mark.parametrize(
    ("model", "version", "x", "name", "datatype", "code", "fragment"),
    [
        ("nope", "", np.zeros((1, FEATURES), np.float32), "input", "FP32", "StatusCode.NOT_FOUND", "unknown model 'nope'"),
        ("tiny", "int4", np.zeros((1, FEATURES), np.float32), "input", "FP32", "StatusCode.NOT_FOUND", "no variant 'int4'"),
        ("tiny", "", np.zeros((1, FEATURES), np.float32), "pixels", "FP32", "StatusCode.INVALID_ARGUMENT", "unknown input 'pixels'"),
        ("tiny", "", np.zeros((1, FEATURES), np.float64), "input", "FP64", "StatusCode.INVALID_ARGUMENT", "expects FP32"),
        ("tiny", "", np.zeros((1, FEATURES + 1), np.float32), "input", "FP32", "StatusCode.INVALID_ARGUMENT", "does not fit"),
        ("tiny", "", np.zeros((100, FEATURES), np.float32), "input", "FP32", "StatusCode.INVALID_ARGUMENT", "--max-batch-size"),
    ],
)
def test_bad_requests_get_the_right_code(
    tiny_server: ServerProcess, model: str, version: str, x: np.ndarray, name: str, datatype: str, code: str, fragment: str
) -> None:
    client = triton.InferenceServerClient(tiny_server.url)
    status, message = _status(lambda: client.infer(model, [_input(x, name, datatype)], model_version=version))
    assert status == code and fragment in message, (status, message)
    assert client.is_server_live()


def test_byte_count_mismatch_is_invalid_argument(tiny_server: ServerProcess) -> None:
    """Raw bytes that disagree with the shape (sent with a hand-made request) are refused, not crashed on."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(tiny_server.url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=[2, FEATURES])
    request.raw_input_contents.append(b"\0" * (4 * FEATURES))  # one row's bytes for a two-row shape
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"needs {8 * FEATURES} bytes, but {4 * FEATURES} were sent" in err.value.details()
    channel.close()


def test_health_service_and_per_model_names(tiny_server: ServerProcess) -> None:
    with grpc.insecure_channel(tiny_server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tiny", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_show_every_variant(tiny_server: ServerProcess) -> None:
    client = triton.InferenceServerClient(tiny_server.url)
    x = np.ones((2, FEATURES), np.float32)
    for variant in ("teacher", "small"):
        client.infer("tiny", [_input(x)], model_version=variant)
    text = tiny_server.metrics()
    for variant in ("teacher", "small"):
        labels = f'model="tiny",variant="{variant}"'
        for family in ("slimserve_request_duration_seconds_count", "slimserve_compute_duration_seconds_count",
                       "slimserve_queue_duration_seconds_count", "slimserve_batch_size_count"):
            assert f"{family}{{{labels}}}" in text, family
        for gauge in ("slimserve_variant_memory_bytes", "slimserve_variant_file_bytes", "slimserve_variant_parameters"):
            assert f"{gauge}{{{labels}}}" in text, gauge
        assert f'slimserve_variant_quality{{metric="accuracy",{labels}}}' in text
        assert f'slimserve_requests_total{{code="OK",{labels}}}' in text
    assert "process_resident_memory_bytes" in text
    stats = client.get_inference_statistics("tiny", "small", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 1


def test_concurrent_load_is_batched_with_identical_results(tmp_path: Path) -> None:
    """Many concurrent callers: every answer equals its own unbatched answer, and runs merged rows."""
    write_tiny_repository(tmp_path, hidden=2048)  # a few ms a run, so concurrent requests queue up
    server = start_server(tmp_path, "--workers", "1")
    try:
        _check_batching(server)
    finally:
        server.stop()


def _check_batching(tiny_server: ServerProcess) -> None:
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(1 + i % 3, FEATURES)).astype(np.float32) for i in range(96)]
    reference_client = triton.InferenceServerClient(tiny_server.url)
    expected = [reference_client.infer("tiny", [_input(x)], model_version="small").as_numpy("logits") for x in inputs]
    before = reference_client.get_inference_statistics("tiny", "small", as_json=True)["model_stats"][0]
    got: list = [None] * len(inputs)
    failures: list[Exception] = []

    def worker(offset: int) -> None:
        client = triton.InferenceServerClient(tiny_server.url)
        for i in range(offset, len(inputs), 8):
            try:
                got[i] = client.infer("tiny", [_input(inputs[i])], model_version="small").as_numpy("logits")
            except Exception as exc:  # collected and asserted below
                failures.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # batched GEMMs may sum in another order
    after = reference_client.get_inference_statistics("tiny", "small", as_json=True)["model_stats"][0]
    requests = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    runs = int(after["execution_count"]) - int(before["execution_count"])
    assert requests == len(inputs)
    assert runs < requests, f"{runs} runs for {requests} concurrent requests: nothing was merged"


def test_changed_file_makes_only_that_model_unavailable(tmp_path: Path) -> None:
    write_tiny_repository(tmp_path, name="good")
    bad = write_tiny_repository(tmp_path, name="bad")
    with (bad / "small" / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    server = start_server(tmp_path)
    try:
        client = triton.InferenceServerClient(server.url)
        assert client.is_model_ready("good")
        status, message = _status(lambda: client.infer("bad", [_input(np.zeros((1, FEATURES), np.float32))]))
        assert status == "StatusCode.UNAVAILABLE" and "sha256" in message
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["bad"]["state"] == "UNAVAILABLE" and "sha256" in index["bad"]["reason"]
    finally:
        server.stop()


def test_sigterm_under_load_loses_no_accepted_request(tmp_path: Path) -> None:
    write_tiny_repository(tmp_path)
    server = start_server(tmp_path)
    client_errors: list[str] = []
    refused: list[str] = []
    completed = [0]
    stop = threading.Event()

    def worker() -> None:
        client = triton.InferenceServerClient(server.url)
        x = np.ones((1, FEATURES), np.float32)
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                client.infer("tiny", [_input(x)])
                completed[0] += 1
            except InferenceServerException as exc:
                # After SIGTERM, new calls are refused (UNAVAILABLE, or CANCELLED by gRPC for calls that
                # arrive as the port closes); whether any *accepted* call failed is checked below.
                (refused if exc.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED") else client_errors).append(
                    f"{exc.status()} {exc.message()}"
                )
                return

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert server.stop() == 0
    stop.set()
    for t in threads:
        t.join(30)
    assert completed[0] > 0 and not client_errors, client_errors
    summary = next(line for line in server.lines if "stopped; inference requests accepted" in line)
    accepted, done, failed, in_flight = map(int, re.findall(r"(\d+)", summary.split("accepted")[1]))
    # Every call the server accepted completed, and the clients saw each of those answers.
    assert failed == 0 and in_flight == 0 and accepted == done == completed[0], (summary, completed[0], refused)


def test_missing_repository_exits_1_with_a_fix(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server", "--model-repository", str(tmp_path / "none"), "--grpc-port", "0",
         "--metrics-port", "-1", "--host", "127.0.0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "python -m compression.build" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("flag", ["--workers", "--max-tokens-per-run", "--inline-compute-us"])
def test_bad_flag_exits_2(flag: str) -> None:
    value = "0" if flag == "--workers" else "-1"
    done = subprocess.run([sys.executable, "-m", "server", flag, value], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and flag in done.stderr and "Traceback" not in done.stderr


def test_queue_limit_and_deadline_through_a_real_server(tmp_path: Path) -> None:
    """A full queue answers RESOURCE_EXHAUSTED at once; a request past its deadline gets DEADLINE_EXCEEDED."""
    write_tiny_repository(tmp_path, hidden=2048)
    server = start_server(tmp_path, "--workers", "1", "--max-queue-size", "2", "--no-batching")
    try:
        codes: list[str] = []
        lock = threading.Lock()
        x = np.ones((64, FEATURES), np.float32)

        def call(timeout: float | None) -> None:
            client = triton.InferenceServerClient(server.url)
            try:
                client.infer("tiny", [_input(x)], client_timeout=timeout)
                code = "OK"
            except InferenceServerException as exc:
                code = exc.status()
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=call, args=(30,)) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert "StatusCode.RESOURCE_EXHAUSTED" in codes and "OK" in codes, codes
        assert set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes

        # Keep the one slot busy, then send a request whose deadline passes while it waits in the queue.
        busy = [threading.Thread(target=call, args=(30,)) for _ in range(2)]
        for t in busy:
            t.start()
        time.sleep(0.05)
        codes.clear()
        call(0.005)
        assert codes == ["StatusCode.DEADLINE_EXCEEDED"], codes
        for t in busy:
            t.join(60)
        text = server.metrics()
        assert 'code="RESOURCE_EXHAUSTED"' in text
    finally:
        server.stop()


def test_cancelled_request_costs_no_compute(tmp_path: Path) -> None:
    """A caller that gives up while its request is queued: the request is dropped, never run."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    write_tiny_repository(tmp_path, hidden=2048)
    server = start_server(tmp_path, "--workers", "1", "--no-batching", "--max-batch-size", "2048")
    try:
        channel = grpc.insecure_channel(server.url)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def request(rows: int) -> service_pb2.ModelInferRequest:
            message = service_pb2.ModelInferRequest(model_name="tiny", model_version="small")
            message.inputs.add(name="input", datatype="FP32", shape=[rows, FEATURES])
            message.raw_input_contents.append(np.ones((rows, FEATURES), np.float32).tobytes())
            return message

        busy = [stub.ModelInfer.future(request(2048), timeout=30) for _ in range(3)]  # ~0.1 s of compute each
        time.sleep(0.05)
        cancelled = stub.ModelInfer.future(request(5), timeout=30)  # 5 rows: recognisable in the counts
        time.sleep(0.01)
        assert cancelled.cancel()
        for future in busy:
            future.result()
        time.sleep(0.2)
        stats = triton.InferenceServerClient(server.url).get_inference_statistics("tiny", "small", as_json=True)
        entry = stats["model_stats"][0]
        assert int(entry["inference_count"]) == 3 * 2048, entry  # the 5 cancelled rows never ran
        channel.close()
    finally:
        server.stop()
