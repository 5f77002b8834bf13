"""Issue 13, the wire: refused requests free their memory, big decodes never stall the loop, bad bodies and
shapes get one-line INVALID_ARGUMENT replies of bounded size. Every test drives a real server process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_process import ServerProcess, start_server
from tiny_repository import FEATURES, write_tiny_repository
from tiny_text_repository import write_text_repository
from tritonclient.grpc import service_pb2, service_pb2_grpc

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
BIG = [("grpc.max_send_message_length", 100 << 20), ("grpc.max_receive_message_length", 100 << 20)]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def _refused(stub: service_pb2_grpc.GRPCInferenceServiceStub, request: service_pb2.ModelInferRequest,
             timeout: float = 120) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=timeout)
    return err.value


def _stopped_output(server: ServerProcess, timeout: float = 30.0) -> str:
    """Stop the server and return all it printed (waits for its last line, so no log line is missed)."""
    server.stop()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any("slimserve: stopped" in line for line in server.lines):
        time.sleep(0.05)
    return "".join(server.lines)


@pytest.fixture()
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    write_tiny_repository(tmp_path)
    server = start_server(tmp_path)
    yield server
    server.stop()


# ---- item 2: refused requests must not wait for the cyclic GC to give their memory back ----

def test_refused_big_requests_give_their_memory_back(fresh_server: ServerProcess) -> None:
    pid = fresh_server.process.pid
    ready = _rss_mb(pid)
    bound = ready + 400
    rows = (60 << 20) // (4 * FEATURES)
    wrong_count = service_pb2.ModelInferRequest(model_name="tiny")  # ~60 MB, 4 bytes short of its shape
    wrong_count.inputs.add(name="input", datatype="FP32", shape=[rows, FEATURES])
    wrong_count.raw_input_contents.append(b"\0" * (rows * 4 * FEATURES - 4))
    strings = service_pb2.ModelInferRequest(model_name="tiny")  # 55 MB of BYTES for an FP32 model
    strings.inputs.add(name="input", datatype="BYTES", shape=[11_000_000])
    strings.raw_input_contents.append(b"\x01\0\0\0x" * 11_000_000)
    peaks = []
    with grpc.insecure_channel(fresh_server.url, options=BIG) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for request in [wrong_count] * 6 + [strings] * 5:
            assert _refused(stub, request).code() == grpc.StatusCode.INVALID_ARGUMENT
            # The reply may leave before the handler's last references drop: wait (bounded) for the state.
            deadline = time.monotonic() + 20
            while _rss_mb(pid) > bound and time.monotonic() < deadline:
                time.sleep(0.05)
            peaks.append(round(_rss_mb(pid)))
            assert peaks[-1] <= bound, f"RSS after each refused request (MB): {peaks}; ready {ready:.0f}"


# ---- item 3: one huge BYTES request must not stall the event loop ----

@pytest.mark.parametrize("lengths", ["all one byte", "varying"])
def test_health_answers_while_a_huge_bytes_request_is_decoded(tiny_server: ServerProcess, lengths: str) -> None:
    if lengths == "all one byte":
        count, raw = 11_000_000, b"\x01\0\0\0x" * 11_000_000
    else:  # lengths 0, 1, 2 in turn: no fixed stride, so the element-by-element path runs
        count, raw = 3_000_000, b"\0\0\0\0\x01\0\0\0x\x02\0\0\0xy" * 1_000_000
    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(raw)
    with grpc.insecure_channel(tiny_server.url, options=BIG) as channel, \
            grpc.insecure_channel(tiny_server.url) as probe_channel:
        big = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(request, timeout=120)
        live = service_pb2_grpc.GRPCInferenceServiceStub(probe_channel).ServerLive
        health = health_pb2_grpc.HealthStub(probe_channel).Check
        slowest, probes = 0.0, 0
        deadline = time.monotonic() + 120
        while not big.done() and probes < 2000 and time.monotonic() < deadline:
            for call, message in ((live, service_pb2.ServerLiveRequest()), (health, health_pb2.HealthCheckRequest())):
                started = time.monotonic()
                call(message, timeout=1.0)  # raises DEADLINE_EXCEEDED when the loop is stalled
                slowest = max(slowest, time.monotonic() - started)
            probes += 1
        assert big.exception(timeout=120).code() == grpc.StatusCode.INVALID_ARGUMENT  # BYTES for an FP32 input
        assert "expects FP32" in big.exception().details()
    assert probes >= 1 and slowest < 1.0


def test_text_rows_are_counted_before_tokenizing(tmp_path: Path) -> None:
    write_text_repository(tmp_path)
    server = start_server(tmp_path, "--max-batch-size", "4")
    try:
        request = service_pb2.ModelInferRequest(model_name="words")
        request.inputs.add(name="text", datatype="BYTES", shape=[5])
        # Row 0 is not UTF-8: the tokenizer would refuse it; the row count must be refused first, untokenized.
        request.raw_input_contents.append(b"".join(len(s).to_bytes(4, "little") + s for s in [b"\xff"] + [b"cat"] * 4))
        with grpc.insecure_channel(server.url) as channel:
            error = _refused(service_pb2_grpc.GRPCInferenceServiceStub(channel), request, timeout=30)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-batch-size" in error.details(), error.details()
    finally:
        server.stop()


# ---- item 4: absurd shapes are the caller's mistake, not an internal error ----

def test_huge_rank_and_overflowing_shapes_are_invalid_argument_without_traceback(fresh_server: ServerProcess) -> None:
    shapes = [[0, 2**62, 2**62], [2**62, 2**62, 0], [2**63 - 1, 2**63 - 1], [1] * 65, [1] * 1000]
    with grpc.insecure_channel(fresh_server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for shape in shapes:
            for datatype in ("FP32", "BYTES"):
                request = service_pb2.ModelInferRequest(model_name="tiny")
                request.inputs.add(name="input", datatype=datatype, shape=shape)
                request.raw_input_contents.append(b"")
                error = _refused(stub, request, timeout=30)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (shape, error.code(), error.details())
                assert "input 'input'" in error.details() and "\n" not in error.details()
                assert len(error.details()) < 400, error.details()
    assert "Traceback" not in _stopped_output(fresh_server)


# ---- item 10: contents and raw_input_contents together are ambiguous ----

def test_contents_together_with_raw_input_contents_is_refused(tiny_server: ServerProcess) -> None:
    request = service_pb2.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, FEATURES])
    tensor.contents.fp32_contents.extend([1.0] * FEATURES)
    request.raw_input_contents.append(np.zeros((1, FEATURES), np.float32).tobytes())
    with grpc.insecure_channel(tiny_server.url) as channel:
        error = _refused(service_pb2_grpc.GRPCInferenceServiceStub(channel), request, timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input'" in error.details() and "raw_input_contents" in error.details(), error.details()


# ---- item 11: undecodable bodies and oversized names ----

@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe", b"\x0a\x10short", b"\x2a" + b"\x80" * 12])
def test_a_body_that_is_not_protobuf_is_invalid_argument(tiny_server: ServerProcess, body: bytes) -> None:
    with grpc.insecure_channel(tiny_server.url) as channel:
        call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            call(body, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.value.code(), err.value.details())
        assert "ModelInferRequest" in err.value.details() and "\n" not in err.value.details()
        assert service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


@pytest.mark.parametrize("name", ["m" * 10_000, "\u00e9" * 10_000, "it's" * 2_500])
def test_a_huge_model_name_gets_the_real_error_in_a_bounded_message(tiny_server: ServerProcess, name: str) -> None:
    with grpc.insecure_channel(tiny_server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=name)
        request.inputs.add(name="input", datatype="FP32", shape=[1, FEATURES])
        request.raw_input_contents.append(np.zeros((1, FEATURES), np.float32).tobytes())
        error = _refused(stub, request, timeout=10)
        assert error.code() == grpc.StatusCode.NOT_FOUND, (error.code(), error.details()[:300])
        assert "unknown model" in error.details() and len(error.details()) <= 1024
        bad_input = service_pb2.ModelInferRequest(model_name="tiny")  # a huge input name is shortened too
        bad_input.inputs.add(name=name, datatype="FP32", shape=[1, FEATURES])
        bad_input.raw_input_contents.append(b"")
        error = _refused(stub, bad_input, timeout=10)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details()[:300])
        assert "were sent" in error.details() and len(error.details()) <= 1024
        error = _refused(stub, service_pb2.ModelInferRequest(model_name=name), timeout=10)  # no inputs
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no inputs" in error.details()
        assert len(error.details()) <= 1024
