"""Bounded waits the tests share: until a condition holds, until a process is stopped by SIGSTOP."""

from __future__ import annotations

import signal
import time
from typing import Callable

import psutil


def wait_until(condition: Callable[[], object], timeout: float = 60.0) -> None:
    """Poll `condition` until it is true; AssertionError after `timeout` seconds (a bound far above any
    healthy run, not a timing the test relies on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def sigstop(process: psutil.Process) -> bool:
    """SIGSTOP `process` and wait until it is stopped (the signal lands asynchronously); False, and the
    process left running, when it ended first or did not stop within a bound far above any scheduling delay."""
    try:
        process.send_signal(signal.SIGSTOP)
        for _ in range(2_000):
            status = process.status()
            if status == psutil.STATUS_STOPPED:
                return True
            if status == psutil.STATUS_ZOMBIE:
                return False
            time.sleep(0.005)
        process.send_signal(signal.SIGCONT)
    except psutil.NoSuchProcess:
        pass
    return False
