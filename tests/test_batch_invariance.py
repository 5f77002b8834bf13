"""Batch invariance through a real server: a row's answer is the same alone and merged with other requests."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from server_process import ServerProcess, start_server
from tiny_repository import FEATURES, write_tiny_repository

from modelrepo.entry import variant_entry
from modelrepo.int8 import QuantizeOptions, quantize_int8
from modelrepo.schema import validate
from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc
from server.batcher import Batcher
from server.runtime import Session

MODEL = "mix"
ROWS = 4  # rows per merged run: the server's --max-batch-size, so a waiting batch closes at exactly this
INVARIANT = ("teacher", "small", "int8_static")
# fp32 float rounding: matrix kernels may block the product differently by batch size, which moves the
# last bits (~1e-7 here); atol covers elements within rounding of zero, where any relative bound fails.
RTOL, ATOL = 1e-5, 1e-6


def _add_int8(folder: Path, name: str, mode: str) -> None:
    """Quantize the teacher into `name` (static QDQ or dynamic) and record it as the build would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    calibration = {"input": np.load(folder / "calibration.npz")["x"]}
    target = folder / name / "model.onnx"
    quantize_int8(folder / "teacher" / "model.onnx", target, calibration if mode == "static" else None,
                  QuantizeOptions(mode=mode))
    teacher = manifest["variants"]["teacher"]
    manifest["variants"][name] = variant_entry(
        folder, target, "int8", "teacher", {"name": "quantize_" + mode, "params": {}}, teacher["parameters"],
        teacher["macs"], teacher["quality"], teacher["latency"], 0.0)
    assert validate(manifest) == []
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 teacher and small (an older manifest: no batch_invariant key), static and dynamic int8."""
    root = tmp_path_factory.mktemp("invariance_repo")
    folder = write_tiny_repository(root, name=MODEL, hidden=64)
    _add_int8(folder, "int8_static", "static")
    _add_int8(folder, "int8_dynamic", "dynamic")
    return root


@pytest.fixture(scope="module")
def servers(repo: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """One server that runs every request as it comes, and one that holds each run open until ROWS rows
    are queued (one worker, a long queue delay that a full batch cuts short): merges are certain, not timed."""
    alone = start_server(repo, "--workers", "1")
    merging = None
    try:
        merging = start_server(repo, "--workers", "1", "--max-batch-size", str(ROWS),
                               "--max-queue-delay-us", "60000000", "--inline-compute-us", "0")
        yield alone, merging
    finally:
        alone.stop()
        if merging is not None:
            merging.stop()


def _infer(url: str, variant: str, x: np.ndarray) -> np.ndarray:
    client = triton.InferenceServerClient(url)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(MODEL, [tensor], model_version=variant).as_numpy("logits")


def _batches(server: ServerProcess, variant: str) -> tuple[int, int]:
    """(runs, rows) of a variant from the slimserve_batch_size histogram."""
    text = server.metrics()
    labels = rf'\{{[^}}]*model="{MODEL}"[^}}]*variant="{re.escape(variant)}"[^}}]*\}}'
    count = re.search(rf"^slimserve_batch_size_count{labels} (\S+)$", text, re.M)
    total = re.search(rf"^slimserve_batch_size_sum{labels} (\S+)$", text, re.M)
    return (int(float(count.group(1))), int(float(total.group(1)))) if count and total else (0, 0)


def _rows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(3 * ROWS, FEATURES)).astype(np.float32)


def _requests(x: np.ndarray) -> list[list[np.ndarray]]:
    """Groups of ROWS rows as requests: the first group a two-row request and two single rows, the others
    single rows. Rows within one request may share activation scales; rows of different requests must not."""
    groups = [x[start:start + ROWS] for start in range(0, len(x), ROWS)]
    return [[g[:2], g[2:3], g[3:4]] if i == 0 else [g[j:j + 1] for j in range(ROWS)] for i, g in enumerate(groups)]


def _mixed(url: str, variant: str, groups: list[list[np.ndarray]]) -> np.ndarray:
    """Each group's requests sent concurrently, one group after the other, so that every group fills
    exactly one held-open run (on the merging server)."""
    out: list[np.ndarray] = []
    with ThreadPoolExecutor(ROWS) as pool:
        for requests in groups:
            out += pool.map(lambda rows: _infer(url, variant, rows), requests)
    return np.concatenate(out)


def test_manifest_and_list_variants_say_which_variants_are_batch_invariant(repo: Path,
                                                                          servers: tuple[ServerProcess, ServerProcess]) -> None:
    manifest = json.loads((repo / MODEL / "manifest.json").read_text())
    assert manifest["variants"]["int8_static"]["batch_invariant"] is True
    assert manifest["variants"]["int8_dynamic"]["batch_invariant"] is False
    assert "batch_invariant" not in manifest["variants"]["teacher"]  # an older manifest: read from the graph
    reply = cpb_grpc.CompressionServiceStub(grpc.insecure_channel(servers[1].url)).ListVariants(
        cpb.ListVariantsRequest(model=MODEL), timeout=30)
    marks = {v.name: v.batch_invariant for v in reply.variants}
    assert marks == {"teacher": True, "small": True, "int8_static": True, "int8_dynamic": False}


@pytest.mark.parametrize("variant", [*INVARIANT, "int8_dynamic"])
def test_rows_get_the_same_answer_alone_and_mixed_with_other_requests(variant: str,
                                                                     servers: tuple[ServerProcess, ServerProcess]) -> None:
    alone_server, merging = servers
    x = _rows()
    groups = _requests(x)
    # The same requests one at a time: nothing to batch with.
    alone = np.concatenate([_infer(alone_server.url, variant, rows) for requests in groups for rows in requests])
    runs_before, rows_before = _batches(merging, variant)
    mixed = _mixed(merging.url, variant, groups)
    runs, rows = (a - b for a, b in zip(_batches(merging, variant), (runs_before, rows_before)))
    assert rows == len(x)
    if variant in INVARIANT:
        assert runs == len(x) // ROWS  # every run merged ROWS rows from 3 or 4 requests
        one_by_one = np.concatenate([_infer(alone_server.url, variant, x[i:i + 1]) for i in range(len(x))])
        np.testing.assert_allclose(mixed, one_by_one, rtol=RTOL, atol=ATOL)
    else:
        assert runs == len(x) - 1  # one run per request (the two-row request is one run): never merged
    np.testing.assert_allclose(mixed, alone, rtol=RTOL, atol=ATOL)


def test_dynamic_int8_would_change_answers_if_it_were_merged(repo: Path) -> None:
    """Why the dynamic variant runs alone: with batch-mates its activation scale, and so its answer, moves."""
    session = ort.InferenceSession(str(repo / MODEL / "int8_dynamic" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = _rows()[:ROWS]
    x[1:] *= 20  # batch-mates with a wider range than the first row
    merged = session.run(None, {"input": x})[0][0]
    alone = session.run(None, {"input": x[:1]})[0][0]
    assert not np.allclose(merged, alone, rtol=RTOL, atol=ATOL)


def _teacher(repo: Path) -> Session:
    return Session(repo / MODEL / "teacher" / "model.onnx")


def test_a_non_invariant_variant_runs_each_request_alone_and_skips_the_queue_delay(repo: Path) -> None:
    session = _teacher(repo)
    batches: list[int] = []

    async def scenario() -> list:
        with ThreadPoolExecutor(1) as pool:
            # A delay far past the test's length: only a skipped delay lets this finish.
            batcher = Batcher(lambda feeds: session.run(feeds), pool, concurrency=1, max_batch_size=64,
                              max_queue_size=64, max_queue_delay_us=600_000_000, merge_requests=False,
                              on_batch=lambda rows, _: batches.append(rows))
            x = _rows()
            results = await asyncio.gather(*(batcher.submit({"input": x[i:i + 2]}) for i in range(0, 8, 2)))
            await batcher.close()
            return results

    results = asyncio.run(scenario())
    assert batches == [2, 2, 2, 2]
    assert [timing.batch_rows for _, timing in results] == [2, 2, 2, 2]


def test_an_idle_variant_settles_after_its_runs_stop(repo: Path) -> None:
    session = _teacher(repo)
    settled = threading.Event()
    x = _rows()
    before = session.run({"input": x})[0]

    def on_idle() -> None:
        session.settle()  # the real hook: shrink ONNX Runtime's arena, trim the heap
        settled.set()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(lambda feeds: session.run(feeds), pool, concurrency=1, max_batch_size=64,
                              max_queue_size=64, on_idle=on_idle, idle_seconds=0.05)
            assert batcher._idle_timer is None  # nothing ran: nothing to settle
            await batcher.submit({"input": x[:1]})
            assert batcher._idle_timer is None  # one row: what a lone request keeps is not worth freeing
            await batcher.submit({"input": x[:4]})  # a batch: its buffers are freed once the variant idles
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, settled.wait, 30)  # bounded wait for the event, not a guess
            await batcher.close()

    asyncio.run(scenario())
    np.testing.assert_array_equal(session.run({"input": x})[0], before)  # a settled session answers the same
