"""A real server process driven by tritonclient.grpc: results, error codes, metrics, health, shutdown."""

from __future__ import annotations

import queue
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
from spin_repository import FOREVER, spin_rows, write_spin_repository
from tiny_repository import FEATURES, write_tiny_repository
from tritonclient.utils import InferenceServerException

from clients.metrics import parse_metrics


def _input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


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


def test_changed_file_makes_only_that_variant_unavailable(tmp_path: Path) -> None:
    """A tampered file takes only its own variant offline: the model and its other variants keep serving."""
    write_tiny_repository(tmp_path, name="good")
    bad = write_tiny_repository(tmp_path, name="bad", routing={"policy": "split", "weights": {"teacher": 1, "small": 1}})
    with (bad / "small" / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    server = start_server(tmp_path)
    try:
        client = triton.InferenceServerClient(server.url)
        x = np.zeros((1, FEATURES), np.float32)
        assert client.is_model_ready("good") and client.is_model_ready("bad", "teacher")
        assert not client.is_model_ready("bad", "small")
        # Explicitly asked for, the bad variant answers UNAVAILABLE with the reason ...
        status, message = _status(lambda: client.infer("bad", [_input(x)], model_version="small"))
        assert status == "StatusCode.UNAVAILABLE" and "sha256" in message
        # ... and routing (a 50/50 split) skips it: every routed request lands on the teacher.
        assert {client.infer("bad", [_input(x)]).get_response().model_version for _ in range(20)} == {"teacher"}
        index = {(m["name"], m["version"]): m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index[("bad", "teacher")]["state"] == "READY"
        assert index[("bad", "small")]["state"] == "UNAVAILABLE" and "sha256" in index[("bad", "small")]["reason"]
        text = server.metrics()
        assert 'slimserve_variant_available{model="bad",variant="small"} 0.0' in text
        assert 'slimserve_variant_available{model="bad",variant="teacher"} 1.0' in text
        assert any("bad/small is unavailable" in line and "sha256" in line for line in server.lines)
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
                # After SIGTERM, new calls are refused with UNAVAILABLE (which retry policies retry; never
                # CANCELLED); whether any *accepted* call failed is checked below.
                (refused if exc.status() == "StatusCode.UNAVAILABLE" else client_errors).append(
                    f"{exc.status()} {exc.message()}"
                )
                return

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    _wait_until(lambda: completed[0] >= 200, 30)
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


def _spin_server(tmp_path: Path, *flags: str) -> ServerProcess:
    """One run slot, no batching: a FOREVER request holds the slot until the server is killed."""
    write_spin_repository(tmp_path)
    return start_server(tmp_path, "--workers", "1", "--no-batching", *flags)


def _spin(server: ServerProcess, steps: float, timeout: float | None = None) -> str:
    """Send one spin request to the teacher; returns "OK" or the status code's name."""
    client = triton.InferenceServerClient(server.url)
    try:
        client.infer("tiny", [_input(spin_rows(steps))], model_version="teacher", client_timeout=timeout)
        return "OK"
    except InferenceServerException as exc:
        return exc.status()
    finally:
        client.close()


def _kill(server: ServerProcess, threads: list[threading.Thread]) -> None:
    """SIGKILL: a graceful stop would wait for the FOREVER run; the callers then get UNAVAILABLE."""
    server.process.kill()
    server.process.wait()
    for t in threads:
        t.join(30)


def test_full_queue_answers_resource_exhausted(tmp_path: Path) -> None:
    """One request runs, --max-queue-size wait; the next is refused at once, whatever the machine's speed."""
    server = _spin_server(tmp_path, "--max-queue-size", "2")
    outcomes: queue.Queue[str] = queue.Queue()
    senders: list[threading.Thread] = []
    try:
        # Requests that never finish: the first to arrive takes the slot, the next two wait, any more are
        # refused. Send them one by one until a refusal comes back; the refusal itself says the queue is
        # full, so nothing here guesses how long a run takes (the pause only paces the sending).
        refused = 0
        while not refused:
            assert len(senders) < 100, "the queue never filled up"
            sender = threading.Thread(target=lambda: outcomes.put(_spin(server, FOREVER)), daemon=True)
            sender.start()
            senders.append(sender)
            try:
                code = outcomes.get(timeout=0.2)
            except queue.Empty:
                continue
            assert code == "StatusCode.RESOURCE_EXHAUSTED", code
            refused += 1
        # Requests still on their way are refused as they arrive: exactly one running plus two waiting remain.
        while len(senders) - refused > 3:
            assert outcomes.get(timeout=60) == "StatusCode.RESOURCE_EXHAUSTED"
            refused += 1
        assert len(senders) - refused == 3 and outcomes.empty()
        # The queue stays full: even a request that would cost nothing is refused, without waiting.
        assert _spin(server, 0) == "StatusCode.RESOURCE_EXHAUSTED"
        snapshot = parse_metrics(server.metrics())
        assert snapshot.value("slimserve_requests_total", code="RESOURCE_EXHAUSTED", variant="teacher") == refused + 1
    finally:
        _kill(server, senders)


def test_deadline_passing_in_the_queue_is_deadline_exceeded(tmp_path: Path) -> None:
    """A request waiting behind a run that never ends fails with DEADLINE_EXCEEDED when its deadline passes."""
    server = _spin_server(tmp_path)
    holder = threading.Thread(target=_spin, args=(server, FOREVER), daemon=True)
    try:
        client = triton.InferenceServerClient(server.url)

        def failed() -> int:
            stats = client.get_inference_statistics("tiny", "teacher", as_json=True)["model_stats"][0]
            return int(stats["inference_stats"].get("fail", {}).get("count", 0))

        holder.start()
        # A zero-step request with a deadline. Until the holder has taken the slot it runs at once (OK,
        # try again); after that it can only wait in the queue. The server must count it as failed, so its
        # deadline passed there rather than on the way; if not, the deadline was too short for this
        # machine's load and is doubled.
        timeout, give_up, ok = 0.5, time.monotonic() + 120, 0
        while True:
            assert time.monotonic() < give_up, f"no queued request timed out (answered OK {ok} times)"
            before = failed()
            code = _spin(server, 0, timeout=timeout)
            if code == "OK":
                ok += 1
                continue
            assert code == "StatusCode.DEADLINE_EXCEEDED", code
            _wait_until(lambda before=before: failed() > before, 10)
            if failed() == before + 1:
                break
            timeout *= 2
        client.close()
    finally:
        _kill(server, [holder])


def test_cancelled_or_expired_requests_leave_the_queue_without_running(tmp_path: Path) -> None:
    """A caller that gives up (or whose deadline passes) while queued: the request leaves the queue at once,
    never runs, frees its queue place, and is counted with its real code; no step depends on speed."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    server = _spin_server(tmp_path, "--max-queue-size", "1")
    holder = threading.Thread(target=_spin, args=(server, FOREVER), daemon=True)
    channel = grpc.insecure_channel(server.url)
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def gauge(name: str) -> float | None:
            return parse_metrics(server.metrics()).value(name, model="tiny", variant="teacher")

        def request() -> service_pb2.ModelInferRequest:
            message = service_pb2.ModelInferRequest(model_name="tiny", model_version="teacher")
            message.inputs.add(name="input", datatype="FP32", shape=[1, FEATURES])
            message.raw_input_contents.append(spin_rows(0).tobytes())
            return message

        holder.start()  # takes the only run slot and keeps it until the server is killed
        _wait_until(lambda: gauge("slimserve_runs_in_progress") == 1, 60)
        cancelled = stub.ModelInfer.future(request(), timeout=60)
        _wait_until(lambda: gauge("slimserve_queue_depth") == 1, 60)
        assert cancelled.cancel()
        _wait_until(lambda: gauge("slimserve_queue_depth") == 0, 60)
        # Its place is free again (--max-queue-size 1): the next request queues instead of being refused,
        # and when its deadline passes it leaves too, counted as DEADLINE_EXCEEDED rather than CANCELLED.
        expiring = stub.ModelInfer.future(request(), timeout=5)
        _wait_until(lambda: gauge("slimserve_queue_depth") == 1 or expiring.done(), 60)
        with pytest.raises(grpc.RpcError) as err:
            expiring.result()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_until(lambda: gauge("slimserve_queue_depth") == 0, 60)
        snapshot = parse_metrics(server.metrics())
        assert snapshot.value("slimserve_requests_total", variant="teacher", code="DEADLINE_EXCEEDED") == 1
        assert snapshot.value("slimserve_requests_total", variant="teacher", code="CANCELLED") == 1
        assert snapshot.value("slimserve_requests_total", variant="teacher", code="RESOURCE_EXHAUSTED") is None
        # The holder ran throughout on the only slot, so neither request can have run.
        assert gauge("slimserve_runs_in_progress") == 1
        stats = triton.InferenceServerClient(server.url).get_inference_statistics("tiny", "teacher", as_json=True)
        assert int(stats["model_stats"][0].get("execution_count", 0)) == 0
    finally:
        channel.close()
        _kill(server, [holder])
