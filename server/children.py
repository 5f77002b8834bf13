"""Child Python processes of the server (on-the-fly jobs, memory probes), started off the event loop.

They are started with `subprocess.Popen` in a worker thread rather than the event loop's own
subprocess support: uvloop forks through libuv and runs Python's after-fork handlers in the child
before exec, in a process full of threads (ONNX Runtime pools, gRPC, executors); children died of
SIGSEGV within milliseconds of the spawn, before printing anything, at random. `Popen` forks with
CPython's exec-only child code and runs nothing else between fork and exec.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

__all__ = ["run_python", "run_python_lines"]


async def run_python_lines(args: list[str], on_line: Callable[[str], None]) -> int:
    """Run `python -m <args>`, calling `on_line` on the event loop for each stdout line, in order; stderr is
    discarded. Its exit status (negative: killed by that signal)."""
    loop = asyncio.get_running_loop()

    def pump() -> int:
        with subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL) as process:
            assert process.stdout is not None
            for raw in process.stdout:
                loop.call_soon_threadsafe(on_line, raw.decode(errors="replace"))
            return process.wait()

    # The status comes back through the loop after every line scheduled above, so no line is lost.
    return await asyncio.to_thread(pump)


async def run_python(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `python -m <args>` to the end (killed after `timeout` seconds: TimeoutExpired); stdout and stderr kept."""
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", *args], capture_output=True,
                                   timeout=timeout, check=False)
