"""Shadow traffic: compare variants with the teacher after replying, and keep live quality per model."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from server.livequality import Interval, LatencyWindow, QualityWindow, median_interval

__all__ = ["LiveRow", "ModelLive", "RoutingChange", "ShadowTracker", "agreement", "agreement_rows"]

log = logging.getLogger(__name__)

# Shadow runs in flight at once, over all models: beyond this a mirror is skipped (and counted), so a slow
# teacher can never pile up work behind live traffic.
MAX_IN_FLIGHT = 64
# Changes of `auto`'s choice kept for GetRouting.
HISTORY = 32


def agreement_rows(task: str, variant_out: np.ndarray, teacher_out: np.ndarray) -> np.ndarray:
    """Per-row agreement: 1.0/0.0 top-1 match for classifiers, cosine for embeddings."""
    a = variant_out.reshape(variant_out.shape[0], -1).astype(np.float64)
    b = teacher_out.reshape(teacher_out.shape[0], -1).astype(np.float64)
    if task == "classification":
        return (a.argmax(axis=1) == b.argmax(axis=1)).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def agreement(task: str, variant_out: np.ndarray, teacher_out: np.ndarray) -> tuple[float, int]:
    """(sum of per-row agreement, rows)."""
    rows = agreement_rows(task, variant_out, teacher_out)
    return float(rows.sum()), int(rows.shape[0])


@dataclass(frozen=True)
class RoutingChange:
    unix: float
    from_variant: str
    to_variant: str
    reason: str


@dataclass(frozen=True)
class LiveRow:
    """One variant's live quality, as the metrics collector exports it."""

    model: str
    variant: str
    metric: str
    compared_total: int
    agreeing_total: float
    window: Interval


class ModelLive:
    """Live state of one model that outlives its Router (rebuilt on SetRouting and reloads).

    A variant's standing (`verdicts`) changes only on evidence: once its window holds `min_samples` rows,
    it meets the budget when the interval's lower bound reaches it, and is demoted when the upper bound
    falls below it; in between it keeps its standing (hysteresis), so routing does not flap."""

    def __init__(self, name: str, lock: threading.Lock) -> None:
        self.name = name
        self._lock = lock
        self.metric = "agreement"
        self.min_samples = 200
        self.budget = 0.99
        self.window_size = 400
        self.quality: dict[str, QualityWindow] = {}
        self.latency: dict[str, LatencyWindow] = {}
        self.verdicts: dict[str, bool] = {}  # variant -> meets the budget on live evidence
        self._shas: dict[str, str] = {}
        self.changes: deque[RoutingChange] = deque(maxlen=HISTORY)

    def configure(self, task: str, shas: Mapping[str, str], min_samples: int, budget: float) -> None:
        """Called by each new Router: forget variants whose file changed, size windows, re-judge on the budget."""
        with self._lock:
            self.metric = "agreement" if task == "classification" else "cosine"
            self.min_samples, self.budget = min_samples, budget
            # Twice min_samples: decisions start at min_samples rows and the interval keeps narrowing after,
            # while rows older than the window expire, so past agreement cannot hide new disagreement.
            self.window_size = 2 * min_samples
            for variant, sha in shas.items():
                if self._shas.get(variant, sha) != sha:  # a new file: its old evidence says nothing about it
                    self.quality.pop(variant, None)
                    self.latency.pop(variant, None)
                    self.verdicts.pop(variant, None)
                self._shas[variant] = sha
            for variant, window in self.quality.items():
                window.resize(self.window_size)
                self._judge(variant)

    def record(self, variant: str, values: Iterable[float]) -> bool:
        """Add compared rows; True when the variant's standing changed."""
        with self._lock:
            window = self.quality.get(variant)
            if window is None:
                window = self.quality[variant] = QualityWindow(self.metric, self.window_size)
            window.add(values)
            return self._judge(variant)

    def _judge(self, variant: str) -> bool:
        live = self.quality[variant].interval()
        if live.n < self.min_samples:
            return False
        before = self.verdicts.get(variant)
        if live.lower >= self.budget:
            self.verdicts[variant] = True
        elif live.upper < self.budget:
            self.verdicts[variant] = False
        after = self.verdicts.get(variant)
        if after is not None and after != before:
            log.info("%s/%s %s: live %s %.4f [%.4f, %.4f] over %d rows, budget %.4f", self.name, variant,
                     "meets the budget" if after else "demoted", self.metric, live.mean, live.lower, live.upper,
                     live.n, self.budget)
            return True
        return False

    def verdict(self, variant: str) -> bool | None:
        """None until live evidence has decided; then whether the variant meets the budget."""
        return self.verdicts.get(variant)

    def demoted(self) -> list[str]:
        return sorted(v for v, meets in self.verdicts.items() if not meets)

    def interval(self, variant: str) -> Interval | None:
        with self._lock:
            window = self.quality.get(variant)
            return window.interval() if window is not None else None

    def observe_latency(self, variant: str, seconds: float) -> None:
        """On the request path: one dict read and a deque append."""
        window = self.latency.get(variant)
        if window is None:
            window = self.latency[variant] = LatencyWindow()
        window.add(seconds)

    def latency_stats(self, variant: str) -> tuple[int, tuple[float, float, float] | None]:
        """(requests, (p50, lower, upper) in seconds or None)."""
        window = self.latency.get(variant)
        if window is None:
            return 0, None
        return window.requests, median_interval(list(window.durations))

    def rows(self) -> list[LiveRow]:
        with self._lock:
            return [LiveRow(self.name, v, w.metric, w.compared_total, w.agreeing_total, w.interval())
                    for v, w in self.quality.items() if w.compared_total]


class ShadowTracker:
    """Live state per model, the bounded set of shadow tasks, and what the metrics collector reads."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._models: dict[str, ModelLive] = {}
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.max_in_flight = max_in_flight
        self.skipped = 0  # mirrors not started because too many were in flight

    def model(self, name: str) -> ModelLive:
        live = self._models.get(name)
        if live is None:
            live = self._models.setdefault(name, ModelLive(name, self._lock))
        return live

    def values(self) -> list[LiveRow]:
        """Read at scrape time (metrics thread)."""
        return [row for live in list(self._models.values()) for row in live.rows()]

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def spawn(self, coroutine: Any) -> bool:
        """Run off the request path; keep a reference so the task is not garbage-collected mid-flight."""
        if len(self._tasks) >= self.max_in_flight:
            coroutine.close()
            self.skipped += 1
            if self.skipped & (self.skipped - 1) == 0:  # 1, 2, 4, 8, ...: visible without flooding the log
                log.warning("shadow: %d mirrors skipped so far (%d in flight); live quality grows more slowly",
                            self.skipped, len(self._tasks))
            return False
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The queue being full or the teacher unloading must never hurt the live request.
            log.debug("shadow request failed: %s", task.exception())
