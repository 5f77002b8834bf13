"""Plain-text reporting shared by the commands: percentiles, number formatting and markdown tables."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["percentiles", "fmt", "table"]


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float]:
    """The `qs` percentiles of `values` (NaN when there are none)."""
    if len(values) == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), qs)]


def fmt(value: float | int | None, digits: int = 3) -> str:
    """A number for a table cell; None and NaN read as `n/a`."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with columns padded to line up in a terminal too."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)
