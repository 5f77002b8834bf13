"""ONNX Runtime sessions of a variant: a one-thread session for runs under load, a wide one for a run alone."""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort
import psutil

from modelrepo.invariance import batch_invariant as graph_batch_invariant
from modelrepo.measure import rows_per_run, run_in_slices
from modelrepo.session import open_session
from server.errors import RepositoryError

__all__ = ["Session", "SessionStats", "ORT_TO_NUMPY", "prime_onnxruntime", "trim_heap"]

log = logging.getLogger(__name__)

# ONNX Runtime's type strings to numpy dtypes, for the types a served model may use.
ORT_TO_NUMPY: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}


def trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc keeps freed memory for reuse otherwise)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _settled_rss(process: psutil.Process) -> int:
    """Resident bytes after returning freed heap to the OS, so a delta counts what a session really holds
    rather than what the allocator happened to keep or reuse."""
    gc.collect()
    trim_heap()
    return process.memory_info().rss


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        _ = libc.malloc_trim  # glibc only: AttributeError elsewhere
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def _shrink_options() -> ort.RunOptions:
    """Run options that release the CPU arena's unused chunks at the end of the run."""
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


_SHRINK = _shrink_options()


class _RunCounter:
    """Runs in progress in this process, over every variant: a run that starts while none is in
    progress is alone on the CPU and may take every core."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    def start(self) -> bool:
        """Count a run in; True when no other run was in progress."""
        with self._lock:
            self._running += 1
            return self._running == 1

    def end(self) -> None:
        with self._lock:
            self._running -= 1


_RUNS = _RunCounter()


def prime_onnxruntime() -> None:
    """Pay ONNX Runtime's one-time start-up memory before measuring variants, so the first variant
    loaded is not charged for it (a one-node Identity model, built in memory)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "prime",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.zeros(1, np.float32)})


@dataclass(frozen=True)
class SessionStats:
    """What loading cost: resident memory added by the session (measured, after a warm-up run)."""

    memory_bytes: int
    load_seconds: float


class Session:
    """A loaded ONNX model; `run` is blocking and thread-safe (ONNX Runtime allows concurrent Run).

    `stats.memory_bytes` starts as this process's RSS delta; the registry replaces it with a figure
    measured in a fresh process (server/memprobe.py), which heap reuse cannot distort.
    """

    def __init__(self, path: Path, intra_op_threads: int = 1, max_tokens_per_run: int = 0,
                 batch_invariant: bool | None = None, lone_threads: int = 1) -> None:
        """`batch_invariant`: the manifest's word on it; None reads it from the graph when first asked.
        `lone_threads` > `intra_op_threads` opens a second session with that many intra-op threads, used
        by a run that starts while no other run is in progress in the process (see `run`)."""
        self.path = path
        self.max_tokens_per_run = max_tokens_per_run
        self._batch_invariant = batch_invariant
        self.lone_runs = 0  # runs that took the wide session (alone in the process)
        self._warm_feeds: dict[str, np.ndarray] = {}
        process = psutil.Process()
        before = _settled_rss(process)
        started = time.perf_counter()
        try:
            self._session = open_session(path, intra_op_threads)
            self._wide = open_session(path, lone_threads) if 0 < intra_op_threads < lone_threads else None
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean "unusable file"
            raise RepositoryError(f"{path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0]}") from None
        self.input_dtypes: dict[str, np.dtype] = {}
        for i in self._session.get_inputs():
            if i.type not in ORT_TO_NUMPY:
                raise RepositoryError(f"{path}: input {i.name!r} has type {i.type}, which slimserve cannot serve")
            self.input_dtypes[i.name] = ORT_TO_NUMPY[i.type]
        self.input_shapes = {i.name: i.shape for i in self._session.get_inputs()}
        self.output_names = [o.name for o in self._session.get_outputs()]
        self._sliceable = _has_sequence_axis(self._session)
        self._warm_up()
        self.batch_first = self._batch_is_cheap()
        load_seconds = time.perf_counter() - started
        after = _settled_rss(process)
        self.stats = SessionStats(memory_bytes=max(0, after - before), load_seconds=load_seconds)

    def _warm_up(self) -> None:
        """One run at batch 1 so first-request latency and the memory figure include ORT's lazy setup."""
        feeds = {}
        for name, dtype in self.input_dtypes.items():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in self.input_shapes[name]]
            feeds[name] = np.zeros(shape, dtype=dtype)
        self._warm_feeds = feeds
        try:
            for session in self._sessions():
                session.run(None, feeds)
        except Exception as exc:  # a model that cannot run on zeros is still servable; log, don't refuse
            log.warning("warm-up of %s failed: %s", self.path, str(exc).splitlines()[0])

    def _batch_is_cheap(self) -> bool:
        """Time a run of 1 row and of 4 rows (fastest of 5 each, one thread): True when a run's fixed
        cost is at least twice a row's, so merging requests saves more than running them side by side
        gains (twice: a clear margin over the noise of 5 timings). digits' teacher: 160 us for 1 row,
        197 us for 4 (the weights are read once per run); MiniLM fp32 at 16 tokens: 8.0 and 20.7 ms
        (the rows are the work)."""
        if not self._warm_feeds:
            return False
        one = {name: self._sample(name, 1) for name in self._warm_feeds}
        four = {name: np.repeat(a, 4, axis=0) for name, a in one.items()}
        try:
            if self._session.run(None, four)[0].shape[:1] != (4,):
                return False  # outputs without a batch axis: requests could not be split back anyway
            seconds = []
            for feeds in (one, four):
                best = float("inf")
                for _ in range(5):
                    started = time.perf_counter()
                    self._session.run(None, feeds)
                    best = min(best, time.perf_counter() - started)
                seconds.append(best)
        except Exception:  # a shape the model refuses (fixed batch of 1, ...): keep the default
            return False
        per_row = (seconds[1] - seconds[0]) / 3
        return seconds[0] - per_row >= 2 * per_row

    def _sample(self, name: str, rows: int) -> np.ndarray:
        """A warm-up input with `rows` rows; token inputs get 16 positions, a typical short sentence."""
        feed = self._warm_feeds[name]
        if self._sliceable and feed.ndim == 2:
            return np.ones((rows, 16), dtype=feed.dtype)
        return np.repeat(feed[:1], rows, axis=0)

    def _sessions(self) -> list[ort.InferenceSession]:
        return [self._session] if self._wide is None else [self._session, self._wide]

    @property
    def batch_invariant(self) -> bool:
        """Whether rows of different requests may share a run without changing anyone's answer."""
        if self._batch_invariant is None:
            self._batch_invariant = graph_batch_invariant(self.path)
        return self._batch_invariant

    def settle(self) -> None:
        """Give back the memory a burst left behind: ONNX Runtime's arena keeps its largest batch's
        buffers for reuse (MiniLM fp32 after 64 x 128-token batches: 155 -> 356 MB, for good). One small
        run that shrinks the arena when it ends frees them; malloc_trim then returns the pages to the OS.
        Called when the variant goes idle, so runs under load keep their buffers and pay nothing."""
        try:
            for session in self._sessions():
                session.run(None, self._warm_feeds, _SHRINK)
        except Exception as exc:  # a model that cannot run on zeros: nothing to shrink with
            log.debug("settle of %s: %s", self.path, str(exc).splitlines()[0])
        trim_heap()

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run the model; `outputs` = None returns every output in the model's order. A batch of token
        sequences over `max_tokens_per_run` tokens runs as consecutive slices of rows (see rows_per_run)."""
        rows = rows_per_run(feeds, self.max_tokens_per_run) if self._sliceable else None
        # Which session is chosen per run, from what else is running, not by a setting: a lone request
        # on the wide session answers 1.5-1.7x sooner (MiniLM, 16-128 tokens, 2 cores), while runs that
        # overlap keep one thread each, as one wide session shared by concurrent runs makes them wait
        # on each other's intra-op threads and lost slimserve its lead under load.
        alone = _RUNS.start()
        try:
            session = self._session
            if alone and self._wide is not None:
                session = self._wide
                self.lone_runs += 1
            return run_in_slices(session, feeds, rows, outputs)
        finally:
            _RUNS.end()


def _has_sequence_axis(session: ort.InferenceSession) -> bool:
    """True for a token model: every input is [batch, sequence] and every output starts with the batch
    axis (both dynamic), so rows can run apart and their outputs be concatenated."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    return (all(len(i.shape) == 2 and not isinstance(i.shape[0], int) and not isinstance(i.shape[1], int)
                for i in inputs)
            and all(len(o.shape) >= 1 and not isinstance(o.shape[0], int) for o in outputs))
