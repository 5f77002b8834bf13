"""The `load` command: C concurrent workers, bounded in time and request count; throughput, errors, latency."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.client import Client
from clients.errors import ClientError, ServerError, UnreachableError
from clients.inputs import Dataset, load_dataset, random_inputs
from clients.report import fmt, percentiles

__all__ = ["DEFAULT_DURATION", "DEFAULT_REQUESTS", "LoadReport", "run_load", "format_load"]

# The bounds of a load test given neither --duration nor --requests (whichever is reached first).
DEFAULT_DURATION = 10.0
DEFAULT_REQUESTS = 10_000


@dataclass
class LoadReport:
    """Outcome of one load test; latencies are of successful requests, in milliseconds."""

    model: str
    variant: str
    concurrency: int
    batch: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)
    served_by: Counter[str] = field(default_factory=Counter)
    client_cpu_seconds: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())


class _Rows:
    """Hands out the next `batch` rows of a dataset to each request, round and round; thread-safe."""

    def __init__(self, dataset: Dataset, batch: int) -> None:
        self._dataset = dataset
        self._batch = min(batch, dataset.rows)
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> dict[str, np.ndarray]:
        with self._lock:
            start = self._next
            self._next = (start + self._batch) % self._dataset.rows
        stop = start + self._batch
        if stop <= self._dataset.rows:
            return self._dataset.take(start, stop)
        head, tail = self._dataset.take(start, self._dataset.rows), self._dataset.take(0, stop - self._dataset.rows)
        return {k: np.concatenate([head[k], tail[k]]) for k in head}


class _Tickets:
    """Hands out at most `limit` request slots until `deadline` (None: no such bound); thread-safe."""

    def __init__(self, limit: int | None, deadline: float | None) -> None:
        self._left = limit
        self._deadline = deadline
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self._deadline is not None and time.perf_counter() >= self._deadline:
            return False
        if self._left is None:
            return True
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def _worker(url: str, timeout: float, report: LoadReport, inputs: dict[str, np.ndarray] | _Rows,
            tickets: _Tickets, lock: threading.Lock) -> None:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    first: dict[str, str] = {}
    served: Counter[str] = Counter()
    try:
        client = Client(url, timeout=timeout)
    except ClientError as exc:
        errors["UNAVAILABLE"] += 1
        first.setdefault("UNAVAILABLE", str(exc))
        client = None
    if client is not None:
        with client:
            while tickets.take():
                began = time.perf_counter()
                try:
                    feeds = inputs.take() if isinstance(inputs, _Rows) else inputs
                    prediction = client.infer(report.model, feeds, variant=report.variant)
                except ServerError as exc:
                    errors[exc.code] += 1
                    first.setdefault(exc.code, exc.message)
                    continue
                except UnreachableError as exc:
                    errors["UNAVAILABLE"] += 1
                    first.setdefault("UNAVAILABLE", str(exc))
                    continue
                except ClientError as exc:
                    errors["CLIENT"] += 1
                    first.setdefault("CLIENT", str(exc))
                    continue
                latencies.append((time.perf_counter() - began) * 1000)
                served[prediction.variant] += 1
    with lock:
        report.latencies_ms.extend(latencies)
        report.errors.update(errors)
        report.served_by.update(served)
        for code, message in first.items():
            report.first_error.setdefault(code, message)


def run_load(
    client: Client,
    model: str,
    variant: str,
    concurrency: int,
    duration: float | None,
    requests: int | None,
    batch: int,
    timeout: float = 30.0,
    data: Path | None = None,
) -> LoadReport:
    """Run the load test for `duration` seconds or `requests` requests, whichever comes first (None: not
    bounded by it; give at least one). Each worker thread has its own gRPC channel; inputs are one random
    batch shaped from the metadata, or with `data` the rows of that file in turn (`batch` per request)."""
    if duration is None and requests is None:
        raise ValueError("run_load needs a duration, a request count or both")
    info = client.model(model, variant)  # NOT_FOUND now, not once per request, for an unknown variant
    inputs: dict[str, np.ndarray] | _Rows = (random_inputs(info, batch=batch, seed=0) if data is None
                                             else _Rows(load_dataset(info, data), batch))
    report = LoadReport(model, variant, concurrency, batch)
    lock = threading.Lock()
    cpu_before = time.process_time()
    started = time.perf_counter()
    tickets = _Tickets(requests, None if duration is None else started + duration)
    threads = [
        threading.Thread(target=_worker, args=(client.url, timeout, report, inputs, tickets, lock),
                         name=f"load-{i}", daemon=True)
        for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.seconds = time.perf_counter() - started
    report.client_cpu_seconds = time.process_time() - cpu_before
    return report


def format_load(report: LoadReport) -> str:
    """The report as a few labelled lines."""
    p50, p95, p99 = percentiles(report.latencies_ms, (50, 95, 99))
    rate = report.requests / report.seconds if report.seconds > 0 else float("nan")
    ok_rate = report.ok / report.seconds if report.seconds > 0 else float("nan")
    served = ", ".join(f"{v or '(unnamed)'} {n}" for v, n in report.served_by.most_common()) or "none"
    errors = ", ".join(f"{code} {n}" for code, n in report.errors.most_common()) or "none"
    cpu = report.client_cpu_seconds / report.requests * 1000 if report.requests else float("nan")
    lines = [
        f"model {report.model}, variant {report.variant or '(routing policy)'}, concurrency {report.concurrency}, "
        f"batch {report.batch}",
        f"requests: {report.requests} in {report.seconds:.2f} s ({report.ok} ok)",
        f"errors: {sum(report.errors.values())} ({errors})",
        f"throughput: {fmt(rate, 1)} req/s ({fmt(ok_rate, 1)} ok req/s, {fmt(ok_rate * report.batch, 1)} rows/s)",
        f"latency ms: p50 {fmt(p50)}, p95 {fmt(p95)}, p99 {fmt(p99)}",
        f"served by: {served}",
        f"client CPU: {fmt(cpu)} ms per request (this process, all threads)",
    ]
    for code, message in sorted(report.first_error.items()):
        lines.append(f"first {code}: {message}")
    return "\n".join(lines)
