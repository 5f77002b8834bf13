"""Faults around the repository and the control plane, on a real server: one bad thing harms only itself."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from server_process import ServerProcess, start_server
from tiny_repository import FEATURES, swap_variant, write_tiny_repository
from tritonclient.utils import InferenceServerException
from waits import wait_until

from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc

# Every manifest shape found to stop the server (issue 13, item 6), as file contents.
BAD_MANIFESTS = {
    "array": "[]",
    "null": "null",
    "variant_string": json.dumps({"schema_version": 1, "variants": {"teacher": "teacher/model.onnx"}}),
    "inputs_number": None,  # filled from a valid manifest below
    "bytes_text": None,
    "routing_string": None,
    "routing_policy": None,
    "shadow_text": None,
    "deep": "[" * 100_000 + "]" * 100_000,
    "not_json": "{\"schema_version\": 1,",
}


def _valid_manifest(root: Path) -> dict:
    write_tiny_repository(root / ".template", name="m")
    return json.loads((root / ".template" / "m" / "manifest.json").read_text())


def _write_bad(root: Path, name: str, text: str) -> None:
    write_tiny_repository(root, name=name)  # real variant files, so only the manifest is wrong
    (root / name / "manifest.json").write_text(text)


def _bad_manifests(template: dict) -> dict[str, str]:
    out = dict(BAD_MANIFESTS)

    def changed(change) -> str:
        manifest = json.loads(json.dumps(template))
        change(manifest)
        return json.dumps(manifest)

    out["inputs_number"] = changed(lambda m: m.__setitem__("inputs", [1]))
    out["bytes_text"] = changed(lambda m: m["variants"]["teacher"].__setitem__("bytes", "abc"))
    out["routing_string"] = changed(lambda m: m.__setitem__("routing", "fast"))
    out["routing_policy"] = changed(lambda m: m.__setitem__("routing", {"policy": "fast"}))
    out["shadow_text"] = changed(lambda m: m.__setitem__("routing", {"policy": "fixed", "shadow": {"fraction": "x"}}))
    return out


def _infer(client: triton.InferenceServerClient, model: str = "tiny", **kwargs) -> triton.InferResult:
    x = triton.InferInput("input", [1, FEATURES], "FP32")
    x.set_data_from_numpy(np.ones((1, FEATURES), np.float32))
    return client.infer(model, [x], client_timeout=10, **kwargs)


def _code(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return exc.status()
    except grpc.RpcError as exc:
        return str(exc.code())
    return "OK"


def _index(client: triton.InferenceServerClient) -> dict[tuple[str, str], dict]:
    return {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index(as_json=True)["models"]}


def test_inference_token_alone_also_guards_admin_calls(tmp_path: Path) -> None:
    write_tiny_repository(tmp_path)
    server = start_server(tmp_path, env={"SLIMSERVE_AUTH_TOKEN": "user-secret"})
    try:
        client = triton.InferenceServerClient(server.url)
        user = {"authorization": "Bearer user-secret"}
        assert _code(lambda: client.unload_model("tiny")) == "StatusCode.UNAUTHENTICATED"
        assert _code(lambda: client.load_model("tiny")) == "StatusCode.UNAUTHENTICATED"
        assert _code(lambda: client.get_model_repository_index()) == "StatusCode.UNAUTHENTICATED"
        assert _code(lambda: client.unload_model("tiny", headers={"authorization": "Bearer x"})) == (
            "StatusCode.PERMISSION_DENIED"
        )
        with grpc.insecure_channel(server.url) as channel:
            admin = cpb_grpc.CompressionServiceStub(channel)
            assert _code(lambda: admin.ListVariants(cpb.ListVariantsRequest(model="tiny"), timeout=10)) == (
                "StatusCode.UNAUTHENTICATED"
            )
            assert admin.ListVariants(cpb.ListVariantsRequest(model="tiny"), metadata=list(user.items()), timeout=10)
        assert client.is_model_ready("tiny", headers=user)  # nothing was unloaded by the refused calls
        assert client.get_model_repository_index(headers=user).models
        client.unload_model("tiny", headers=user)
        assert not client.is_model_ready("tiny", headers=user)
    finally:
        server.stop()


def test_bad_manifests_neither_stop_the_server_nor_the_poll(tmp_path: Path) -> None:
    bad = _bad_manifests(_valid_manifest(tmp_path))
    write_tiny_repository(tmp_path)
    for name, text in list(bad.items())[:5]:
        _write_bad(tmp_path, name, text)
    server = start_server(tmp_path, "--poll-seconds", "0.2")
    try:
        client = triton.InferenceServerClient(server.url)
        assert client.is_server_ready() and _infer(client).as_numpy("logits").shape == (1, 3)
        index = _index(client)
        for name in list(bad)[:5]:
            assert index[(name, "")]["state"] == "UNAVAILABLE" and index[(name, "")]["reason"], name
            assert _code(lambda name=name: _infer(client, name)) == "StatusCode.UNAVAILABLE"
        # The rest appear while the poll runs; then a good model is added after them and must still load.
        for name, text in list(bad.items())[5:]:
            _write_bad(tmp_path, name, text)
        wait_until(lambda: all(_index(client).get((n, ""), {}).get("state") == "UNAVAILABLE" for n in list(bad)[5:]))
        write_tiny_repository(tmp_path, name="late")
        wait_until(lambda: client.is_model_ready("late"))
        assert client.is_server_ready()
        # A manifest that is fixed is picked up on the next poll.
        (tmp_path / "null" / "manifest.json").write_text((tmp_path / "late" / "manifest.json").read_text())
        wait_until(lambda: client.is_model_ready("null"))
        assert _infer(client, "null").as_numpy("logits").shape == (1, 3)
        # Each broken folder is reported once, not on every poll, and never with a traceback.
        output = "".join(server.lines)
        assert "Traceback" not in output
        assert len(re.findall(r"bytes_text", output)) <= 3, output[-3000:]
    finally:
        server.stop()


def test_junk_model_names_are_refused_and_leave_no_trace(tiny_server: ServerProcess) -> None:
    client = triton.InferenceServerClient(tiny_server.url)
    before = len(_index(client))
    assert _code(lambda: client.load_model("tiny\x00")) == "StatusCode.INVALID_ARGUMENT"
    assert _code(lambda: client.load_model("../tiny")) == "StatusCode.INVALID_ARGUMENT"
    for i in range(300):
        assert _code(lambda i=i: client.load_model(f"junk-{i}")) == "StatusCode.NOT_FOUND"
    assert len(_index(client)) == before
    assert client.is_server_ready() and client.is_model_ready("tiny")
    try:
        client.load_model("x" * 10_000)
    except InferenceServerException as exc:  # the real error, bounded, not a metadata-size failure
        assert exc.status() == "StatusCode.INVALID_ARGUMENT" and len(exc.message()) < 1000
    else:
        raise AssertionError("a 10k-character name was accepted")
    assert "Traceback" not in "".join(tiny_server.lines)


def test_two_folders_with_one_manifest_name_are_two_models(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        write_tiny_repository(tmp_path, name=folder)
        manifest = json.loads((tmp_path / folder / "manifest.json").read_text())
        manifest["name"] = "same"
        (tmp_path / folder / "manifest.json").write_text(json.dumps(manifest))
    server = start_server(tmp_path)
    try:
        client = triton.InferenceServerClient(server.url)
        for folder in ("a", "b"):
            assert _infer(client, folder).get_response().model_name == folder
        samples = [line.rsplit(" ", 1)[0] for line in server.metrics().splitlines() if line and line[0] != "#"]
        duplicates = [s for s, n in Counter(samples).items() if n > 1]
        assert not duplicates, duplicates
        assert 'model="a"' in server.metrics() and 'model="same"' not in server.metrics()
    finally:
        server.stop()


def test_health_and_codes_follow_unload_and_load(tmp_path: Path) -> None:
    write_tiny_repository(tmp_path)
    server = start_server(tmp_path)
    try:
        client = triton.InferenceServerClient(server.url)
        with grpc.insecure_channel(server.url) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(name: str) -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

            assert status("tiny") == health_pb2.HealthCheckResponse.SERVING
            client.unload_model("tiny")
            assert status("tiny") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert status("") == health_pb2.HealthCheckResponse.SERVING  # the server itself still serves
            assert _code(lambda: _infer(client)) == "StatusCode.UNAVAILABLE"
            # While the model loads again, callers get UNAVAILABLE (retryable), never NOT_FOUND.
            codes: list[str] = []
            loaded = threading.Event()

            def hammer() -> None:
                for _ in range(20_000):
                    codes.append(_code(lambda: _infer(client)))
                    if loaded.is_set():
                        return

            thread = threading.Thread(target=hammer)
            thread.start()
            client.load_model("tiny")
            loaded.set()
            thread.join(60)
            assert set(codes) <= {"StatusCode.UNAVAILABLE", "OK"}, Counter(codes)
            assert status("tiny") == health_pb2.HealthCheckResponse.SERVING
            assert _code(lambda: _infer(client)) == "OK"
    finally:
        server.stop()


def test_reflection_answers_v1_and_v1alpha(tiny_server: ServerProcess) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(tiny_server.url) as channel:
        for version in ("v1", "v1alpha"):
            call = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            reply = next(iter(call(iter([request]), timeout=10)))
            names = {s.name for s in reply.list_services_response.service}
            assert {"inference.GRPCInferenceService", "grpc.reflection.v1.ServerReflection"} <= names, names
            assert "slimserve.v1.CompressionService" in names


def test_hot_reload_under_load_fails_no_request(tmp_path: Path) -> None:
    """A variant replaced on disk (file, then manifest) while 4 clients call it: every call succeeds."""
    folder = write_tiny_repository(tmp_path / "repo")
    server = start_server(tmp_path / "repo", "--poll-seconds", "0.1")
    try:
        client = triton.InferenceServerClient(server.url)
        before = _infer(client, model_version="small").as_numpy("logits")
        other = write_tiny_repository(tmp_path / "other", hidden=16)
        codes: Counter = Counter()
        changed = threading.Event()
        stop = threading.Event()

        def caller() -> None:
            mine = triton.InferenceServerClient(server.url)
            for _ in range(20_000):
                if stop.is_set():
                    return
                try:
                    got = _infer(mine, model_version="small").as_numpy("logits")
                    codes["OK"] += 1
                    if not np.allclose(got, before):
                        changed.set()
                except InferenceServerException as exc:
                    codes[exc.status()] += 1

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: codes["OK"] >= 50)
        swap_variant(folder, other)
        wait_until(changed.is_set)
        ok_at_swap = codes["OK"]
        wait_until(lambda: codes["OK"] >= ok_at_swap + 50)
        stop.set()
        for t in threads:
            t.join(30)
        assert set(codes) == {"OK"}, codes
    finally:
        server.stop()


def test_flood_of_good_and_bad_calls_leaves_the_server_answering(tmp_path: Path) -> None:
    """64 clients mixing good requests with malformed ones: only OK, INVALID_ARGUMENT, NOT_FOUND or
    RESOURCE_EXHAUSTED come back (never INTERNAL), health answers throughout, and the server stays up."""
    write_tiny_repository(tmp_path)
    server = start_server(tmp_path, "--max-queue-size", "8")
    try:
        codes: Counter = Counter()
        lock = threading.Lock()
        x = np.ones((2, FEATURES), np.float32)

        def send(client: triton.InferenceServerClient, kind: int) -> None:
            good = triton.InferInput("input", [2, FEATURES], "FP32")
            good.set_data_from_numpy(x)
            if kind == 0:
                client.infer("tiny", [good], client_timeout=30)
            elif kind == 1:
                good.set_shape([3, FEATURES])  # the byte count no longer matches the shape
                client.infer("tiny", [good], client_timeout=30)
            elif kind == 2:
                client.infer("nope", [good], client_timeout=30)
            else:
                client.infer("tiny", [good], model_version="int4", client_timeout=30)

        def caller(i: int) -> None:
            mine = triton.InferenceServerClient(server.url)
            for j in range(25):
                code = _code(lambda j=j: send(mine, (i + j) % 4))
                with lock:
                    codes[code] += 1

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        with grpc.insecure_channel(server.url) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while any(t.is_alive() for t in threads):
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                time.sleep(0.05)
        for t in threads:
            t.join(60)
        assert sum(codes.values()) == 64 * 25
        allowed = {"OK", "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND", "StatusCode.RESOURCE_EXHAUSTED"}
        assert set(codes) <= allowed, codes
        assert codes["OK"] > 0 and codes["StatusCode.INVALID_ARGUMENT"] == 64 * 25 // 4
        assert server.process.poll() is None and "Traceback" not in "".join(server.lines)
    finally:
        server.stop()
