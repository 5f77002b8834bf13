"""Dynamic batching merges queued requests, splits results back exactly, and enforces queue limits."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tiny_repository import FEATURES, write_tiny_repository

from server.batcher import Batcher
from server.errors import DeadlineExceeded, ResourceExhausted
from server.runtime import Session


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    folder = write_tiny_repository(tmp_path_factory.mktemp("batcher"))
    return Session(folder / "teacher" / "model.onnx")


def test_concurrent_requests_merge_and_split_exactly(session: Session) -> None:
    gate = threading.Event()
    batches: list[int] = []

    def run(feeds: dict) -> list:
        gate.wait(5)  # hold the first run so the others queue up behind it
        return session.run(feeds)

    async def scenario() -> list:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, concurrency=1, max_batch_size=64, max_queue_size=64,
                              on_batch=lambda rows, _: batches.append(rows))
            batcher.start()
            rng = np.random.default_rng(0)
            inputs = [rng.normal(size=(n, FEATURES)).astype(np.float32) for n in (1, 3, 2, 1, 4)]
            tasks = [asyncio.create_task(batcher.submit({"input": inputs[0]}))]
            await asyncio.sleep(0.02)  # the runner has taken the first request and is blocked on the gate
            tasks += [asyncio.create_task(batcher.submit({"input": x})) for x in inputs[1:]]
            await asyncio.sleep(0.02)
            gate.set()
            results = await asyncio.gather(*tasks)
            await batcher.close()
            return list(zip(inputs, results))

    for x, (outputs, _timing) in asyncio.run(scenario()):
        np.testing.assert_array_equal(outputs[0], session.run({"input": x})[0])
        assert outputs[0].shape == (x.shape[0], 3)
    assert batches[0] == 1 and batches[1] == 10, batches  # first ran alone, the four queued ones merged


async def _until(condition, what: str) -> None:
    """Let the event loop run until `condition()` holds (bounded in steps, not in time)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.parametrize("batch_first, expected", [(False, [1, 1, 1, 2]), (True, [1, 4])])
def test_batch_first_variant_waits_for_its_run_instead_of_taking_a_second_worker(
        session: Session, batch_first: bool, expected: list[int]) -> None:
    """With two workers free, a request arriving during a run takes the second worker, unless the variant
    is batch-first (runs cost little more with more rows): then it waits and shares the next run. Otherwise
    the workers share the queue (3 queued rows, 2 workers: runs of 2 and 1), not one worker taking it all."""
    gate = threading.Event()
    batches: list[int] = []

    def run(feeds: dict) -> list:
        gate.wait(5)
        return session.run(feeds)

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as pool:
            batcher = Batcher(run, pool, concurrency=2, max_batch_size=64, max_queue_size=64,
                              batch_first=batch_first, on_batch=lambda rows, _: batches.append(rows))
            x = {"input": np.ones((1, FEATURES), np.float32)}
            tasks = [asyncio.create_task(batcher.submit(x))]
            await _until(lambda: batcher.running == 1, "the first run started")
            tasks += [asyncio.create_task(batcher.submit(x)) for _ in range(4)]
            await _until(lambda: batcher.running + batcher.depth == 5,
                         "every request is running or queued")
            assert batcher.running == (1 if batch_first else 2)
            gate.set()
            for outputs, _timing in await asyncio.gather(*tasks):
                np.testing.assert_array_equal(outputs[0], session.run(x)[0])
            await batcher.close()

    asyncio.run(scenario())
    assert sorted(batches) == expected


def test_a_tiny_model_is_measured_batch_first(session: Session) -> None:
    """The tiny MLP's run is nearly all fixed cost, so the load-time measurement marks it batch-first."""
    assert session.batch_first


def test_full_queue_is_refused_at_once(session: Session) -> None:
    gate = threading.Event()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(lambda f: (gate.wait(5), session.run(f))[1], pool, concurrency=1,
                              max_batch_size=1, max_queue_size=2)
            batcher.start()
            x = {"input": np.zeros((1, FEATURES), np.float32)}
            running = asyncio.create_task(batcher.submit(x))
            await asyncio.sleep(0.02)  # taken by the runner, queue empty again
            queued = [asyncio.create_task(batcher.submit(x)) for _ in range(2)]
            await asyncio.sleep(0.02)
            started = time.perf_counter()
            with pytest.raises(ResourceExhausted, match="queue of this variant is full"):
                await batcher.submit(x)
            assert time.perf_counter() - started < 0.01
            gate.set()
            await asyncio.gather(running, *queued)
            await batcher.close()

    asyncio.run(scenario())


def test_expired_deadline_is_dropped_without_compute(session: Session) -> None:
    gate = threading.Event()
    runs: list[int] = []

    def run(feeds: dict) -> list:
        gate.wait(5)
        runs.append(1)
        return session.run(feeds)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, concurrency=1, max_batch_size=8, max_queue_size=8, batching=False)
            batcher.start()
            x = {"input": np.zeros((1, FEATURES), np.float32)}
            first = asyncio.create_task(batcher.submit(x))
            await asyncio.sleep(0.02)
            late = asyncio.create_task(batcher.submit(x, deadline=time.monotonic() + 0.01))
            await asyncio.sleep(0.05)
            gate.set()
            await first
            with pytest.raises(DeadlineExceeded):
                await late
            await batcher.close()

    asyncio.run(scenario())
    assert len(runs) == 1


def test_text_requests_of_different_lengths_share_a_padded_run(tmp_path: Path) -> None:
    """Token inputs padded on the right merge into one run; each caller gets its own unpadded answer."""
    from tiny_text_repository import write_text_repository

    session = Session(write_text_repository(tmp_path) / "teacher" / "model.onnx")
    gate = threading.Event()
    batches: list[int] = []

    def run(feeds: dict) -> list:
        gate.wait(5)
        return session.run(feeds)

    def feeds(ids: list[int]) -> dict:
        return {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}

    requests = [feeds([2, 3]), feeds([4, 5, 6, 7]), feeds([8]), feeds([9, 10, 11])]

    async def scenario() -> list:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, concurrency=1, max_batch_size=64, max_queue_size=64,
                              on_batch=lambda rows, _: batches.append(rows),
                              pad_values={"input_ids": 0, "attention_mask": 0})
            first = asyncio.create_task(batcher.submit(requests[0]))
            await asyncio.sleep(0.02)
            rest = [asyncio.create_task(batcher.submit(r)) for r in requests[1:]]
            await asyncio.sleep(0.02)
            gate.set()
            results = await asyncio.gather(first, *rest)
            await batcher.close()
            return results

    for request, (outputs, _) in zip(requests, asyncio.run(scenario())):
        np.testing.assert_allclose(outputs[0], session.run(request)[0], atol=1e-6)
    assert batches == [1, 3], batches


def test_short_runs_on_an_idle_server_skip_the_worker_thread(session: Session) -> None:
    """With `inline_below_us`, once a variant's runs are known to be short, a request that finds the
    batcher idle runs on the event loop's own thread; longer runs still go to the executor."""
    threads: list[str] = []

    def run(feeds: dict) -> list:
        threads.append(threading.current_thread().name)
        return session.run(feeds)

    async def scenario(inline_us: int) -> list:
        threads.clear()
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
            batcher = Batcher(run, pool, concurrency=1, max_batch_size=64, max_queue_size=64,
                              inline_below_us=inline_us)
            x = np.ones((2, FEATURES), np.float32)
            outputs = [(await batcher.submit({"input": x}))[0][0] for _ in range(3)]
            await batcher.close()
            return outputs

    x = np.ones((2, FEATURES), np.float32)
    for out in asyncio.run(scenario(1_000_000)):
        np.testing.assert_array_equal(out, session.run({"input": x})[0])
    # The first run measures the variant (on a worker); the next ones are known to be short.
    assert threads[0].startswith("worker") and threads[1:] == ["MainThread", "MainThread"], threads
    asyncio.run(scenario(0))
    assert all(t.startswith("worker") for t in threads), threads
