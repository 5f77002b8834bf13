"""Starts a real `python -m server` subprocess on free loopback ports and stops it; used by the tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Hosts as the server prints them: IPv4 (0.0.0.0 too) or a bracketed IPv6 literal such as [::].
_HOST = r"[\d.]+|\[[0-9a-fA-F:.]+\]"
READY = re.compile(rf"gRPC on ({_HOST}):(\d+), metrics http://(?:{_HOST}):(\d+)/metrics")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    grpc_port: int
    metrics_port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(repository: Path, *extra: str, timeout: float = 60.0, env: dict | None = None,
                 host: str | None = "127.0.0.1", prefix: tuple[str, ...] = ()) -> ServerProcess:
    """Launch the server and wait for its 'gRPC on …' line; raises with its output if it does not come up.
    `host` None leaves the address to the server's default (or SLIMSERVE_HOST); `prefix` runs it under
    another command (e.g. setpriv, to serve as an unprivileged user)."""
    cmd = [*prefix, sys.executable, "-m", "server", "--model-repository", str(repository),
           *(["--host", host] if host is not None else []), "--grpc-port", "0", "--metrics-port", "0", *extra]
    process = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        lines.append(line)
        match = READY.search(line)
        if match:
            server = ServerProcess(process, int(match.group(2)), int(match.group(3)), lines)
            _drain(process, lines)
            return server
    process.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))


def _drain(process: subprocess.Popen, lines: list[str]) -> None:
    """Keep reading the server's output in the background so its pipe never fills up."""
    import threading

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
