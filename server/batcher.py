"""Per-variant request queue with opportunistic dynamic batching, run on a shared executor.

Runners take the oldest queued request and merge whatever else is already waiting with the same
inputs and row shape, up to `max_batch_size` rows, into one ONNX Runtime run; nothing waits for a
batch to fill unless `max_queue_delay_us` is set, so an idle server adds no delay; a waiting batch
starts as soon as `max_batch_size` rows are queued (as in Triton). Results are split
back by rows. The queue is bounded (RESOURCE_EXHAUSTED past it); a request whose deadline has passed
or whose caller went away is dropped before it costs any compute. A variant that is not batch-invariant
(`merge_requests=False`: its answers would depend on batch-mates) runs each request alone, with its own
rows. A variant whose runs are mostly fixed cost (`batch_first`) runs one batch at a time: a request that
arrives during its run waits for it and joins the next batch rather than taking a second worker.
After a batch, `idle_seconds` without work run the `on_idle` hook once on a worker (memory settling).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from server.errors import DeadlineExceeded, ResourceExhausted, Unavailable

__all__ = ["Batcher", "BatchTiming", "RunFn"]

RunFn = Callable[[dict[str, np.ndarray]], list[np.ndarray]]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchTiming:
    """How one request was served: seconds queued, seconds of the run, rows in that run."""

    queue_seconds: float
    compute_seconds: float
    batch_rows: int


@dataclass(eq=False)  # identity: the queue removes a cancelled request by identity, never by comparing arrays
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple
    deadline: float | None
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


def _merge_key(inputs: dict[str, np.ndarray], padded: frozenset[str]) -> tuple:
    """Requests merge only if every input has the same name, dtype and non-batch shape; for inputs
    that may be padded (token ids and masks) the sequence axis is left out of the key."""
    return tuple(
        sorted((name, a.dtype.str, a.shape[2:] if name in padded else a.shape[1:]) for name, a in inputs.items())
    )


def _pad_concat(arrays: list[np.ndarray], value: int) -> np.ndarray:
    """Stack rows of different sequence lengths, padding axis 1 on the right with `value`."""
    longest = max(a.shape[1] for a in arrays)
    if all(a.shape[1] == longest for a in arrays):
        return np.concatenate(arrays)
    out = np.full((sum(a.shape[0] for a in arrays), longest, *arrays[0].shape[2:]), value, dtype=arrays[0].dtype)
    row = 0
    for a in arrays:
        out[row : row + a.shape[0], : a.shape[1]] = a
        row += a.shape[0]
    return out


class Batcher:
    """Queue + dispatch for one variant; at most `concurrency` runs of it at once."""

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        *,
        concurrency: int,
        max_batch_size: int,
        max_queue_size: int,
        max_queue_delay_us: int = 0,
        batching: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
        pad_values: dict[str, int] | None = None,
        inline_below_us: int = 0,
        merge_requests: bool = True,
        batch_first: bool = False,
        on_idle: Callable[[], None] | None = None,
        idle_seconds: float = 1.0,
    ) -> None:
        """`pad_values`: inputs whose axis 1 may be right-padded with that value so that requests of
        different sequence lengths share a run (token ids and attention masks of mean-pooled encoders).
        `inline_below_us`: while this variant's runs take less than that (recent average), a request
        that finds the server idle runs on the event loop itself instead of hopping to a worker thread.
        `merge_requests`: rows of different requests may share a run (the variant is batch-invariant).
        `batch_first`: a run of several rows costs little more than a run of one (measured at load), so
        requests that arrive during a run wait for it and share the next one; a second run starts only
        when a full batch is queued.
        `on_idle`: blocking hook run on the executor once the variant has had no work for `idle_seconds`
        after a run of several rows (0 = never)."""
        self._run = run
        self._pad_values = dict(pad_values or {})
        self._padded = frozenset(self._pad_values)
        self._executor = executor
        self._concurrency = max(1, concurrency)
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.max_queue_delay = max_queue_delay_us / 1e6
        self.batching = batching
        self.merge_requests = merge_requests
        self.batch_first = batch_first
        self._on_batch = on_batch
        self._on_idle = on_idle
        self.idle_seconds = idle_seconds
        self._last_run = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._batch_full: asyncio.Event | None = None  # set while a run waits out the queue delay
        self._queue: collections.deque[_Pending] = collections.deque()
        self._busy = 0
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self.inline_below = inline_below_us / 1e6
        # Recent average seconds per run (exponentially weighted); None until the first run.
        self.recent_compute: float | None = None

    def start(self) -> None:
        """Nothing to start: work is dispatched as it arrives (kept for symmetry with close)."""

    async def close(self) -> None:
        """Stop taking work and let what is queued or running finish."""
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        while self._queue or self._busy:
            await asyncio.sleep(0.005)

    @property
    def depth(self) -> int:
        """Requests waiting for a run (callers that went away are not counted)."""
        return sum(1 for p in self._queue if not p.future.done())

    @property
    def running(self) -> int:
        """Runs of this variant in progress."""
        return self._busy

    def _purge(self) -> None:
        """Drop queued requests whose caller left or whose deadline passed: they must not hold queue places."""
        now = time.monotonic()
        live: collections.deque[_Pending] = collections.deque()
        for p in self._queue:
            if p.future.done():
                continue
            if p.deadline is not None and now > p.deadline:
                p.future.set_exception(DeadlineExceeded("the request's deadline passed while it was queued"))
                continue
            live.append(p)
        self._queue = live

    async def submit(
        self, inputs: dict[str, np.ndarray], deadline: float | None = None
    ) -> tuple[list[np.ndarray], BatchTiming]:
        """Run one request (rows on axis 0 of every input); returns its own rows of every output."""
        if self._closed:
            raise Unavailable("the variant is being unloaded; retry")
        rows = next(iter(inputs.values())).shape[0] if inputs else 1
        if not self._queue and self._busy < self._slots() and not self.max_queue_delay:
            # Fast path: a free slot and nobody waiting, so run now; no queue, no extra task switch.
            group = [_Pending(inputs, rows, (), deadline, None)]  # type: ignore[arg-type]
            enqueued = time.perf_counter()
            if self._busy == 0 and self.recent_compute is not None and self.recent_compute < self.inline_below:
                # A run this short costs less than waking a worker thread and waking the loop back
                # (~70 µs here), so blocking the loop for it delays other requests by less than the
                # hop would. Under load such requests run one after another on the loop; for runs
                # this short that out-served batching them on workers (3,009 vs 2,534 req/s at c=16).
                results, started, finished = self._execute(group)
            else:
                self._busy += 1
                try:
                    results, started, finished = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self._execute, group
                    )
                finally:
                    self._busy -= 1
                    self._dispatch()
            self._observe(rows, finished - started)
            return results[0], BatchTiming(started - enqueued, finished - started, rows)
        if len(self._queue) >= self.max_queue_size:
            self._purge()
        if len(self._queue) >= self.max_queue_size:
            raise ResourceExhausted(
                f"the queue of this variant is full ({self.max_queue_size} requests waiting); retry with backoff"
            )
        pending = _Pending(inputs, rows, _merge_key(inputs, self._padded), deadline, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if self._batch_full is not None and self._queued_rows() >= self.max_batch_size:
            self._batch_full.set()  # the waiting batch is full: waiting longer cannot add to it
        self._dispatch()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The caller went away (cancelled, or its deadline passed in gRPC): free its queue place now.
            if not self._closed:
                try:
                    self._queue.remove(pending)
                except ValueError:
                    pass  # already taken for a run
            raise

    def _queued_rows(self) -> int:
        return sum(p.rows for p in self._queue)

    def _slots(self) -> int:
        """Runs of this variant allowed at once now. For a batch-first variant, one unless a full batch
        waits: digits' teacher under 16 clients made batches of 1.36 rows with both workers taking
        requests as they came, and nearly doubled that waiting for the run in progress (README)."""
        if (self.batch_first and self.batching and self.merge_requests
                and self._queued_rows() < self.max_batch_size):
            return 1
        return self._concurrency

    def _dispatch(self) -> None:
        """Start a run for queued work while there are free slots."""
        while self._queue and self._busy < self._slots():
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._run_queued())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _observe(self, rows: int, seconds: float) -> None:
        """Record one run: the recent average that gates inline runs, and the caller's hook."""
        last = self.recent_compute
        self.recent_compute = seconds if last is None else 0.8 * last + 0.2 * seconds
        if self._on_batch is not None:
            self._on_batch(rows, seconds)
        if self._on_idle is not None and self.idle_seconds > 0:
            # One timer at a time, re-armed when it fires: a run costs a clock read, not a timer.
            self._last_run = time.monotonic()
            # Only runs of several rows grow the arena much past what one request keeps; settling after
            # lone requests would make the next one re-grow it (MiniLM fp32 1 x 128 tokens: ~3 ms).
            if self._idle_timer is None and rows > 1:
                self._idle_timer = asyncio.get_running_loop().call_later(self.idle_seconds, self._idle_check)

    def _idle_check(self) -> None:
        """Timer: once nothing has run, queued or been running for `idle_seconds`, run `on_idle`."""
        self._idle_timer = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_run + self.idle_seconds - time.monotonic()
        if wait > 0 or self._busy or self._queue:
            self._idle_timer = loop.call_later(max(wait, self.idle_seconds / 4), self._idle_check)
            return
        task = loop.create_task(self._settle())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self) -> None:
        assert self._on_idle is not None
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._on_idle)
        except Exception as exc:  # settling is housekeeping: a failure must not reach any request
            log.warning("idle hook failed: %s", exc)

    def _take_group(self) -> list[_Pending]:
        """Pop the oldest live request and every queued request that can share its run."""
        now = time.monotonic()
        first: _Pending | None = None
        while self._queue and first is None:
            candidate = self._queue.popleft()
            if candidate.future.done():  # caller cancelled: costs nothing
                continue
            if candidate.deadline is not None and now > candidate.deadline:
                candidate.future.set_exception(DeadlineExceeded("the request's deadline passed while it was queued"))
                continue
            first = candidate
        if first is None:
            return []
        group, rows = [first], first.rows
        limit = self.max_batch_size
        if not self.batch_first:
            # Share the queue among the workers rather than one worker taking it all: the others would
            # otherwise serve only newcomers while the whole queue waits on one long run. MiniLM fp32 at
            # 128 tokens, 16 clients: one run took every queued row, and p99 was 7x p50 (703 / 101 ms).
            limit = min(limit, max(rows, -(-(rows + self._queued_rows()) // self._concurrency)))
        if self.batching and self.merge_requests and rows < limit:
            keep: collections.deque[_Pending] = collections.deque()
            while self._queue:
                item = self._queue.popleft()
                if item.future.done():
                    continue
                if item.key == first.key and rows + item.rows <= limit:
                    if item.deadline is not None and now > item.deadline:
                        item.future.set_exception(DeadlineExceeded("the request's deadline passed while it was queued"))
                        continue
                    group.append(item)
                    rows += item.rows
                else:
                    keep.append(item)
            self._queue = keep
        return group

    def _execute(self, group: list[_Pending]) -> tuple[list[list[np.ndarray]], float, float]:
        """Runs in the executor thread: merge, run, split. Returns per-request outputs and timings."""
        started = time.perf_counter()
        if len(group) == 1:
            deadline = group[0].deadline
            if deadline is not None and time.monotonic() > deadline:
                # It waited for a worker thread (other variants share them) past its deadline: skip the run.
                raise DeadlineExceeded("the request's deadline passed before a worker was free")
            feeds = group[0].inputs
        else:
            feeds = {
                name: _pad_concat([p.inputs[name] for p in group], self._pad_values[name])
                if name in self._padded
                else np.concatenate([p.inputs[name] for p in group])
                for name in group[0].inputs
            }
        outputs = self._run(feeds)
        finished = time.perf_counter()
        if len(group) == 1:
            return [outputs], started, finished
        total = sum(p.rows for p in group)
        for out in outputs:
            if out.ndim == 0 or out.shape[0] != total:
                raise _NotBatchable()
        split_at = np.cumsum([p.rows for p in group])[:-1]
        per_output = [np.split(out, split_at) for out in outputs]
        return [[parts[i] for parts in per_output] for i in range(len(group))], started, finished

    async def _run_queued(self) -> None:
        try:
            if (self.max_queue_delay and self.batching and self.merge_requests
                    and self._queued_rows() < self.max_batch_size):
                # Configured delay: give concurrent requests a moment to join the batch, until it is full.
                # Runs waiting at once share one event: a full queue releases them all.
                event = self._batch_full or asyncio.Event()
                self._batch_full = event
                try:
                    await asyncio.wait_for(event.wait(), self.max_queue_delay)
                except asyncio.TimeoutError:
                    pass
                finally:
                    if self._batch_full is event:
                        self._batch_full = None
            group = self._take_group()
            if group:
                await self._run_group(group)
        finally:
            self._busy -= 1
            self._dispatch()

    async def _run_group(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results, started, finished = await loop.run_in_executor(self._executor, self._execute, group)
        except _NotBatchable:
            self.batching = False  # an output without a batch axis: serve this variant one request at a time
            self._queue.extendleft(reversed(group))
            return
        except Exception as exc:  # ORT errors go back to each caller; the variant keeps serving
            for p in group:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        rows = sum(p.rows for p in group)
        compute = finished - started
        self._observe(rows, compute)
        for p, result in zip(group, results):
            if not p.future.done():
                p.future.set_result((result, BatchTiming(started - p.enqueued, compute, rows)))


class _NotBatchable(Exception):
    """An output's first axis is not the batch: merged requests cannot be split back."""
