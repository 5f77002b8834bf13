"""Live quality and latency per variant: sliding windows with 95% intervals (Wilson, normal, order statistics)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable

__all__ = ["Interval", "LatencyWindow", "QualityWindow", "median_interval", "normal_interval", "wilson"]

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A live figure with its 95% interval over `n` samples."""

    n: int
    total: float  # agreeing rows (classification) or sum of cosines (embedding)
    mean: float
    lower: float
    upper: float


def wilson(agreeing: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion: honest near 0 and 1, where the normal one collapses to a point."""
    if n <= 0:
        return 0.0, 1.0
    p = agreeing / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    # Clamped around p: float rounding must not put 1.0 outside [lower, upper].
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def normal_interval(total: float, squares: float, n: int, z: float = Z95) -> tuple[float, float]:
    """mean ± z·sd/√n from a sum and a sum of squares, clamped to the cosine's range [-1, 1]."""
    if n <= 1:
        return -1.0, 1.0
    mean = total / n
    variance = max(squares - total * total / n, 0.0) / (n - 1)
    half = z * math.sqrt(variance / n)
    return max(-1.0, mean - half), min(1.0, mean + half)


def median_interval(samples: Iterable[float]) -> tuple[float, float, float] | None:
    """(p50, lower, upper): a distribution-free 95% interval for the median from order statistics.

    [x(j), x(n+1-j)] covers the median with probability 1 − 2·P(B ≤ j−1), B ~ Binomial(n, ½); j is the
    largest rank keeping that ≥ 95%. Below 6 samples no rank reaches 95%, so the interval is [min, max]."""
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        return None
    p50 = xs[(n - 1) // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    # Exact binomial tail in integers (2**n overflows a float for n > 1023).
    whole = 1 << n
    tail, term, j = 0, 1, 0  # tail = Σ_{i<j} C(n, i); term = C(n, j)
    while j < n // 2 and (tail + term) * 40 <= whole:  # P(B ≤ j) ≤ 2.5%
        tail += term
        term = term * (n - j) // (j + 1)
        j += 1
    if j == 0:
        return p50, xs[0], xs[-1]
    return p50, xs[j - 1], xs[n - j]


class QualityWindow:
    """Per-row agreement with the teacher over the last `size` rows, plus cumulative totals for counters.

    Running sums make adding a row O(1); for cosines they are recomputed from the window once per `size`
    evictions so float drift cannot build up over months of traffic."""

    def __init__(self, metric: str, size: int) -> None:
        self.metric = metric  # "agreement" (0/1 per row) or "cosine"
        self._rows: deque[float] = deque(maxlen=size)
        self._sum = 0.0
        self._squares = 0.0
        self._evicted = 0
        self.compared_total = 0
        self.agreeing_total = 0.0

    def resize(self, size: int) -> None:
        if size != self._rows.maxlen:
            self._rows = deque(self._rows, maxlen=size)
            self._recompute()

    def add(self, values: Iterable[float]) -> None:
        rows = self._rows
        for value in values:
            if len(rows) == rows.maxlen:
                old = rows[0]
                self._sum -= old
                self._squares -= old * old
                self._evicted += 1
            rows.append(value)
            self._sum += value
            self._squares += value * value
            self.compared_total += 1
            self.agreeing_total += value
        if self._evicted >= (rows.maxlen or 1):
            self._recompute()

    def _recompute(self) -> None:
        self._sum = math.fsum(self._rows)
        self._squares = math.fsum(v * v for v in self._rows)
        self._evicted = 0

    def interval(self) -> Interval:
        n = len(self._rows)
        if self.metric == "agreement":
            agreeing = round(self._sum)  # 0/1 rows: the sum is an exact count
            lower, upper = wilson(agreeing, n)
            return Interval(n, float(agreeing), agreeing / n if n else 0.0, lower, upper)
        lower, upper = normal_interval(self._sum, self._squares, n)
        return Interval(n, self._sum, self._sum / n if n else 0.0, lower, upper)


class LatencyWindow:
    """The last `size` server-side durations of a variant (seconds) and how many requests it served."""

    def __init__(self, size: int = 1024) -> None:
        self.durations: deque[float] = deque(maxlen=size)
        self.requests = 0

    def add(self, seconds: float) -> None:
        self.durations.append(seconds)
        self.requests += 1
