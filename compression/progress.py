"""What the user sees while the build runs: one line per finished step, bars on a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

__all__ = ["Progress", "Step"]


class Step:
    """A running step; `note` sets the detail printed when it ends."""

    def __init__(self) -> None:
        self.detail = ""

    def note(self, detail: str) -> None:
        self.detail = detail


class Progress:
    """Step lines with elapsed time on `stream` (stderr), tqdm bars only when it is a terminal.

    Bars on a pipe or a log file turn into carriage-return noise, so there only the lines remain.
    """

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.bars = not quiet and self.stream.isatty()
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, text: str) -> None:
        if not self.quiet:
            print(f"[{self.elapsed():6.1f}s] {text}", file=self.stream, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[Step]:
        """Time a step and report it on completion (failures surface as the exception)."""
        step = Step()
        began = time.monotonic()
        yield step
        detail = f": {step.detail}" if step.detail else ""
        self.line(f"{title} ({time.monotonic() - began:.1f}s){detail}")

    def bar(self, total: int, desc: str) -> tqdm:
        """A bar to `update()`; disabled (a no-op with the same interface) off a terminal."""
        return tqdm(total=total, desc=desc, file=self.stream, leave=False,
                    disable=not self.bars)
