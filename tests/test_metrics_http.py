"""The /metrics endpoint: many scrapers and idle connections, bad requests, keep-alive, bind failures."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from server_process import ROOT, ServerProcess, start_server

from server.errors import SlimserveError
from server.metrics_http import MetricsHttpServer

IDLE_CONNECTIONS = 1000
SCRAPERS = 400


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    # Its own process: the thread counts below must not see other tests' traffic.
    process = start_server(tiny_repo)
    yield process
    assert process.stop() == 0
    # Misbehaving clients are answered or dropped, never logged as server failures.
    assert not [line for line in process.lines if "Traceback" in line or " ERROR " in line], process.lines


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def _exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_get_head_errors_and_keep_alive_on_one_connection(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200 and response.getheader("Content-Type", "").startswith("text/plain")
    assert b"slimserve_requests_total" in body
    sock = conn.sock
    conn.request("HEAD", "/metrics")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"" and int(response.getheader("Content-Length")) > 0
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 404 and response.read()
    conn.request("POST", "/metrics", body=b"")
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "GET, HEAD" and response.read()
    conn.request("GET", "/metrics?name[]=slimserve_requests_total")
    response = conn.getresponse()
    filtered = response.read()
    assert response.status == 200 and b"slimserve_requests_total" in filtered and b"process_cpu" not in filtered
    assert conn.sock is sock  # every answer kept the connection open
    conn.close()


def test_openmetrics_gzip_and_http_1_0(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)
    conn.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0",
                                             "Accept-Encoding": "gzip"})
    response = conn.getresponse()
    assert response.getheader("Content-Type").startswith("application/openmetrics-text")
    assert response.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(response.read()).endswith(b"# EOF\n")
    conn.close()
    # HTTP/1.0 without keep-alive: answered, then closed by the server.
    answer = _exchange(server.metrics_port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert _status(answer) == 200 and b"Connection: close" in answer


def test_bad_requests_get_400_or_431_and_the_server_stays_up(server: ServerProcess) -> None:
    port = server.metrics_port
    assert _status(_exchange(port, b"GARBAGE\r\n\r\n")) == 400
    assert _status(_exchange(port, b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")) == 400
    assert _status(_exchange(port, b"GET /metrics SPDY/9\r\n\r\n")) == 400
    assert _status(_exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n")) == 400
    huge = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 9000 + b"\r\n\r\n"
    assert _status(_exchange(port, huge)) == 431
    # A head that never ends is cut off at the limit too, without waiting for the idle timeout.
    assert _status(_exchange(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)) == 431
    assert server.process.poll() is None
    assert "slimserve_requests_total" in server.metrics()


def test_concurrent_scrapes_all_answer(server: ServerProcess) -> None:
    async def scrape() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.metrics_port)
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
        finally:
            writer.close()
        return _status(answer) if answer else 0

    async def scrape_all() -> list[int | BaseException]:
        # One bound for the whole burst; the old thread-per-connection server (listen backlog 5) left about half
        # of them unanswered after 5 s on a 2-core VM; this one answers all of them in a fraction of a second.
        async with asyncio.timeout(10):
            return await asyncio.gather(*(scrape() for _ in range(SCRAPERS)), return_exceptions=True)

    results = asyncio.run(scrape_all())
    assert results.count(200) == SCRAPERS, {repr(r) for r in results if r != 200}


def test_idle_connections_use_no_threads_and_are_closed(server: ServerProcess) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE_CONNECTIONS + 200:
        if hard != resource.RLIM_INFINITY and hard < IDLE_CONNECTIONS + 200:
            pytest.skip(f"needs {IDLE_CONNECTIONS + 200} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (IDLE_CONNECTIONS + 200, hard))
    pid = server.process.pid
    server.metrics()
    ready = _threads(pid)
    sockets = [socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5) for _ in range(IDLE_CONNECTIONS)]
    try:
        # Answered after the server has taken (at least most of) the idle connections queued before it.
        started = time.monotonic()
        assert "slimserve_requests_total" in server.metrics()
        assert time.monotonic() - started < 5
        # The old endpoint held one thread per idle connection (1,011 threads here).
        assert _threads(pid) <= ready + 5, (ready, _threads(pid))
        # Idle connections are closed by the server after its idle timeout (10 s).
        deadline = time.monotonic() + 30
        for sock in sockets:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for sock in sockets:
            sock.close()
    assert server.process.poll() is None and "slimserve_requests_total" in server.metrics()


def _with_busy_metrics_port(tiny_repo: Path, *command: str) -> tuple[subprocess.CompletedProcess, int, int]:
    """Run `command` + server flags with the metrics port taken by another socket: (result, gRPC, metrics port)."""
    grpc_port = _free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        metrics_port = busy.getsockname()[1]
        done = subprocess.run(
            [*command, "--model-repository", str(tiny_repo), "--host", "127.0.0.1",
             "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--log-level", "warning"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    return done, grpc_port, metrics_port


def test_busy_metrics_port_is_one_line_and_exit_1(tiny_repo: Path) -> None:
    done, grpc_port, metrics_port = _with_busy_metrics_port(tiny_repo, sys.executable, "-m", "server")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"slimserve: cannot listen on 127.0.0.1:{metrics_port} for metrics: "
        "address in use (is another server running? pick --metrics-port)"
    ], done.stderr
    # Nothing was left behind: the gRPC port that had been bound before the failure is free again.
    with socket.socket() as again:
        again.bind(("127.0.0.1", grpc_port))


# `SlimServer.start` alone, as when the metrics port is taken after `_serve` checked it: gRPC is bound by then.
_START_ONLY = """
import asyncio, sys, uvloop
from server.app import SlimServer
from server.errors import SlimserveError
from server.settings import parse_settings

async def main():
    try:
        await SlimServer(parse_settings(sys.argv[1:])).start()
    except SlimserveError as exc:
        print(exc.message)

uvloop.run(main())
"""


def test_start_that_fails_on_metrics_leaves_nothing_running(tiny_repo: Path) -> None:
    # A process with a live gRPC server or worker thread left would not exit: the timeout would fire.
    done, grpc_port, metrics_port = _with_busy_metrics_port(tiny_repo, sys.executable, "-c", _START_ONLY)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith(f"cannot listen on 127.0.0.1:{metrics_port} for metrics: address in use")
    with socket.socket() as again:
        again.bind(("127.0.0.1", grpc_port))


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("probe", "A counter for the endpoint tests", registry=registry).inc()
    return registry


async def _get(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    try:
        return await reader.read()
    finally:
        writer.close()


def test_connection_cap_closes_extra_connections_at_once() -> None:
    async def scenario() -> None:
        httpd = MetricsHttpServer(_registry(), max_connections=2)
        port = await httpd.start("127.0.0.1", 0)
        try:
            # The server takes connections in the order they were made, so these two are counted first.
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            try:
                assert await reader.read() == b""
            except ConnectionResetError:
                pass
            writer.close()
            for _, held_writer in held:
                held_writer.close()
            # Once the server has seen those closes, scrapes are served again.
            answers = []
            for _ in range(100):
                try:
                    answers.append(await _get("127.0.0.1", port))
                except ConnectionResetError:
                    answers.append(b"reset")
                if b"probe_total 1.0" in answers[-1]:
                    break
                await asyncio.sleep(0.05)
            assert b"probe_total 1.0" in answers[-1], answers
        finally:
            await httpd.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_bind_errors_are_one_line() -> None:
    async def scenario() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(SlimserveError, match=rf"^cannot listen on 127\.0\.0\.1:{port} for metrics: address in use"):
                await MetricsHttpServer(_registry()).start("127.0.0.1", port)
        with pytest.raises(SlimserveError, match=r"^cannot listen on 192\.0\.2\.1:0 for metrics: address not available"):
            await MetricsHttpServer(_registry()).start("192.0.2.1", 0)

    asyncio.run(asyncio.wait_for(scenario(), 20))


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_literals_and_dual_stack_any() -> None:
    async def scenario() -> None:
        for host in ("::1", "[::1]"):
            httpd = MetricsHttpServer(_registry())
            port = await httpd.start(host, 0)
            try:
                assert b"probe_total 1.0" in await _get("::1", port)
            finally:
                await httpd.close()
        # "::" takes IPv4 scrapers too, like gRPC's "[::]".
        httpd = MetricsHttpServer(_registry())
        port = await httpd.start("::", 0)
        try:
            assert b"probe_total 1.0" in await _get("127.0.0.1", port)
            assert b"probe_total 1.0" in await _get("::1", port)
        finally:
            await httpd.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
