"""Two real servers on one writable repository (replicas sharing a volume): a variant made on the fly by one
is picked up by the other's poll, without a restart, and the other never sees it half-written."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from server_process import ServerProcess, start_server
from tiny_repository import FEATURES, write_tiny_repository

from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc

MODEL = "tiny"
ROOT = Path(__file__).resolve().parent.parent


def _input(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture()
def servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess, Path]]:
    write_tiny_repository(tmp_path)
    a = start_server(tmp_path, "--poll-seconds", "0.2")
    try:
        b = start_server(tmp_path, "--poll-seconds", "0.2")
    except BaseException:
        a.stop()
        raise
    yield a, b, tmp_path
    b.stop()
    a.stop()


class IndexWatcher:
    """Polls a server's RepositoryIndex and ModelReady(model, version) in a thread, recording what it saw."""

    def __init__(self, server: ServerProcess, version: str) -> None:
        self.client = triton.InferenceServerClient(server.url)
        self.version = version
        self.not_ready: list[tuple[str, str, str, str]] = []  # (name, version, state, reason) of the model
        self.ready_seen: list[bool] = []  # ModelReady(model, version), in order
        self.polls = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for entry in self.client.get_model_repository_index(as_json=True).get("models", []):
                    if entry.get("name") == MODEL and entry.get("state") != "READY":
                        self.not_ready.append((entry["name"], entry.get("version", ""), entry.get("state", ""),
                                               entry.get("reason", "")))
                ready = self.client.is_model_ready(MODEL, self.version)
                if not self.ready_seen or self.ready_seen[-1] != ready:
                    self.ready_seen.append(ready)
                self.polls += 1
            except Exception as exc:  # recorded and asserted on, never swallowed
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(0.01)

    def __enter__(self) -> IndexWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _problems(server: ServerProcess, since: int) -> list[str]:
    """Log lines at WARNING or above, or naming a staging folder, printed after line `since`."""
    return [line for line in server.lines[since:]
            if " ERROR " in line or " WARNING " in line or " CRITICAL " in line or ".partial-" in line]


def test_variant_made_on_one_server_is_served_by_the_other(servers) -> None:
    a, b, root = servers
    recipe, name = "int8_static", "int8-made-on-a"
    client_a = triton.InferenceServerClient(a.url)
    client_b = triton.InferenceServerClient(b.url)
    assert not client_b.is_model_ready(MODEL, name)
    log_mark = len(b.lines)

    admin_a = cpb_grpc.CompressionServiceStub(grpc.insecure_channel(a.url))
    with IndexWatcher(b, name) as watcher:
        job = admin_a.CreateVariant(cpb.CreateVariantRequest(
            model=MODEL, name=name, recipe=recipe, params={"calibration_samples": "64"}), timeout=10)
        states = list(admin_a.WatchJob(cpb.GetJobRequest(id=job.id), timeout=120))
        assert states[-1].state == cpb.Job.SUCCEEDED, states[-1].message
        # B's poll (every 0.2 s) notices the manifest change and loads the variant: no restart.
        _wait_for(lambda: client_b.is_model_ready(MODEL, name), 30, f"server B to serve {MODEL}/{name}")
        _wait_for(lambda: watcher.polls >= 3 and watcher.ready_seen[-1], 10, "the watcher to see it ready")

    # B never listed the model or the new variant as anything but READY, and flipped to ready once.
    assert not watcher.errors, watcher.errors[:3]
    assert not watcher.not_ready, watcher.not_ready[:5]
    assert watcher.ready_seen == [False, True], watcher.ready_seen
    assert watcher.polls > 10, f"only {watcher.polls} index polls during the job"
    index_b = {(m["name"], m.get("version", "")): m["state"] for m in client_b.get_model_repository_index(as_json=True)["models"]}
    assert index_b == {(MODEL, "teacher"): "READY", (MODEL, "small"): "READY", (MODEL, name): "READY"}

    # The same file answers the same on both servers.
    x = np.random.default_rng(11).normal(size=(5, FEATURES)).astype(np.float32)
    on_a = client_a.infer(MODEL, [_input(x)], model_version=name)
    on_b = client_b.infer(MODEL, [_input(x)], model_version=name)
    assert on_b.get_response().model_version == name
    np.testing.assert_array_equal(on_b.as_numpy("logits"), on_a.as_numpy("logits"))

    # B learned of it by polling the shared folder, loaded it, and logged nothing about A's staging folder.
    assert any(f"repository poll: {MODEL} is new or changed on disk" in line for line in b.lines[log_mark:]), \
        "".join(b.lines[log_mark:])[-2000:]
    assert any(f"loaded {MODEL}/{name}" in line for line in b.lines[log_mark:])
    assert not _problems(b, log_mark), _problems(b, log_mark)
    assert not _problems(a, 0), _problems(a, 0)
    listed = {v.name: v for v in cpb_grpc.CompressionServiceStub(grpc.insecure_channel(b.url)).ListVariants(
        cpb.ListVariantsRequest(model=MODEL), timeout=10).variants}
    assert listed[name].loaded and listed[name].sha256 == states[-1].result.sha256
    assert not list((root / MODEL).glob(".*partial*")), "staging folder left behind"


def test_jobs_on_both_servers_at_once_both_land(servers) -> None:
    """Each server makes a variant while the other's job runs: B's sweep at its job's start must leave A's
    staging folder (held by A) alone, and both entries must end up in the one manifest and on both servers."""
    a, b, root = servers
    admin_a = cpb_grpc.CompressionServiceStub(grpc.insecure_channel(a.url))
    admin_b = cpb_grpc.CompressionServiceStub(grpc.insecure_channel(b.url))
    job_a = admin_a.CreateVariant(cpb.CreateVariantRequest(
        model=MODEL, name="int8-a", recipe="int8_static", params={"calibration_samples": "64"}), timeout=10)
    # B starts only once A's staging folder exists and A is working in it.
    _wait_for(lambda: list((root / MODEL).glob(f".int8-a.partial-{job_a.id}")), 30, "A's staging folder")
    job_b = admin_b.CreateVariant(cpb.CreateVariantRequest(model=MODEL, name="int8-b", recipe="int8_dynamic"),
                                  timeout=10)
    final_a = list(admin_a.WatchJob(cpb.GetJobRequest(id=job_a.id), timeout=120))[-1]
    final_b = list(admin_b.WatchJob(cpb.GetJobRequest(id=job_b.id), timeout=120))[-1]
    assert final_a.state == cpb.Job.SUCCEEDED, final_a.message
    assert final_b.state == cpb.Job.SUCCEEDED, final_b.message
    manifest = json.loads((root / MODEL / "manifest.json").read_text())
    assert {"int8-a", "int8-b"} <= manifest["variants"].keys(), sorted(manifest["variants"])
    for server in (a, b):
        client = triton.InferenceServerClient(server.url)
        for name in ("int8-a", "int8-b"):
            _wait_for(lambda c=client, n=name: c.is_model_ready(MODEL, n), 30, f"{server.url} to serve {name}")
    assert not any("removed stale staging folder" in line for line in a.lines + b.lines)
    assert not _problems(a, 0) and not _problems(b, 0), _problems(a, 0) + _problems(b, 0)


_WRITER = """
import sys, time
from pathlib import Path
from server.manifest_io import update_manifest
folder, tag, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
while time.time() < start:
    pass
for i in range(100):
    update_manifest(folder, lambda m: m["variants"]["teacher"]["quality"].__setitem__(f"{tag}{i}", 0.5))
"""


def test_concurrent_manifest_updates_from_two_processes_are_not_lost(tmp_path: Path) -> None:
    """Two servers' read-change-write of one manifest (a job's new entry, SetRouting) take turns."""
    folder = write_tiny_repository(tmp_path)
    start = time.time() + 1.0
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), tag, str(start)], cwd=ROOT)
               for tag in ("a", "b")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    quality = json.loads((folder / "manifest.json").read_text())["variants"]["teacher"]["quality"]
    written = {f"{tag}{i}" for tag in "ab" for i in range(100)}
    assert written <= quality.keys(), f"{len(written - quality.keys())} of 200 updates lost"


def test_routing_set_on_one_server_reaches_the_other(servers) -> None:
    a, b, _root = servers
    admin_a = cpb_grpc.CompressionServiceStub(grpc.insecure_channel(a.url))
    admin_b = cpb_grpc.CompressionServiceStub(grpc.insecure_channel(b.url))
    assert admin_b.GetRouting(cpb.GetRoutingRequest(model=MODEL), timeout=10).variant == "teacher"
    admin_a.SetRouting(cpb.SetRoutingRequest(routing=cpb.Routing(model=MODEL, policy="fixed", variant="small")),
                       timeout=10)
    _wait_for(lambda: admin_b.GetRouting(cpb.GetRoutingRequest(model=MODEL), timeout=10).variant == "small", 15,
              "server B to take the routing written by A")
    client_b = triton.InferenceServerClient(b.url)
    x = np.ones((1, FEATURES), np.float32)
    assert client_b.infer(MODEL, [_input(x)]).get_response().model_version == "small"
