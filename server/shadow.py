"""Shadow traffic: mirror a share of requests to the teacher after replying, and track agreement live."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np

__all__ = ["ShadowTracker", "agreement"]

log = logging.getLogger(__name__)


def agreement(task: str, variant_out: np.ndarray, teacher_out: np.ndarray) -> tuple[float, int]:
    """(sum of per-row agreement, rows): top-1 match for classifiers, cosine for embeddings."""
    a = variant_out.reshape(variant_out.shape[0], -1).astype(np.float64)
    b = teacher_out.reshape(teacher_out.shape[0], -1).astype(np.float64)
    if task == "classification":
        return float(np.sum(a.argmax(axis=1) == b.argmax(axis=1))), a.shape[0]
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
    return float(cosine.sum()), a.shape[0]


class ShadowTracker:
    """Running mean agreement per (model, variant); read by the metrics collector at scrape time."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()

    def record(self, model: str, variant: str, total: float, rows: int) -> None:
        with self._lock:
            entry = self._sums.setdefault((model, variant), [0.0, 0])
            entry[0] += total
            entry[1] += rows

    def values(self) -> list[tuple[str, str, float]]:
        with self._lock:
            return [(m, v, s / n) for (m, v), (s, n) in self._sums.items() if n]

    def spawn(self, coroutine) -> None:
        """Run off the request path; keep a reference so the task is not garbage-collected mid-flight."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The queue being full or the teacher unloading must never hurt the live request.
            log.debug("shadow request failed: %s", task.exception())
