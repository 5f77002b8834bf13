"""Prometheus /metrics over HTTP/1.1 on the server's event loop: bounded heads, idle timeouts, a connection cap."""

from __future__ import annotations

import asyncio
import gzip
import logging
import resource
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from server.errors import SlimserveError
from server.ports import bind_error, host_port

__all__ = ["MetricsHttpServer"]

log = logging.getLogger("slimserve.metrics")

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
}

class MetricsHttpServer:
    """Serves `GET|HEAD /metrics` from one registry; `start` returns the bound port, `close` drops every connection."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        backlog: int = 1024,
        max_head_bytes: int = 8192,
        idle_timeout: float = 10.0,
        max_connections: int = 2048,
    ) -> None:
        self.registry = registry
        self.backlog = backlog
        self.max_head_bytes = max_head_bytes
        self.idle_timeout = idle_timeout
        # Each connection is a file descriptor: leave at least half of the process's share to gRPC and the models.
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.max_connections = max(1, min(max_connections, soft // 2)) if soft > 0 else max_connections
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        # One thread renders: the text of a few hundred series takes milliseconds (2.5 ms for 2 variants, 57 ms for
        # 50 on a 2-core VM), too long to hold the loop that answers inference calls.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")
        # Scrapes that arrive while the same output is being rendered share that rendering, so a burst of scrapers
        # costs a few renderings rather than one each.
        self._rendering: dict[tuple, asyncio.Future[bytes]] = {}

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (port 0 = a free one); a bind failure is a one-line `SlimserveError`."""
        bare = host.strip("[]")  # "[::1]" as written for gRPC is the same address as "::1"
        shown = host_port(bare, port)
        try:
            sock = await self._bind(bare, port)
        except OverflowError:
            raise SlimserveError(f"cannot listen on {shown} for metrics: ports are 0-65535 (pick --metrics-port)") from None
        except OSError as exc:  # socket.gaierror included
            raise bind_error(exc, shown, "metrics", "--metrics-port") from None
        self._server = await asyncio.start_server(
            self._connection, sock=sock, backlog=self.backlog, limit=self.max_head_bytes
        )
        self._executor.submit(lambda: None)  # start the render thread now, so the thread count is stable from here on
        return sock.getsockname()[1]

    async def _bind(self, host: str, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                # "::" then takes IPv4 scrapers too, as gRPC's "[::]" does (asyncio would make it IPv6-only).
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            sock.listen(self.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def close(self) -> None:
        """Stop listening and drop open connections (scrapes in progress are cut; Prometheus retries)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            try:
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            except TimeoutError:
                pass
            self._server = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            writer.transport.abort()  # over the cap: refuse at once rather than queue work or descriptors
            return
        self._connections.add(writer)
        # drain() then returns only once everything is with the kernel, so closing never cuts a response short
        writer.transport.set_write_buffer_limits(high=0)
        try:
            while await self._request(reader, writer):
                pass
            # Half-close, then read what the client still sends (an oversized head, a body): closing with unread
            # input makes the kernel reset the connection, and the client could lose the answer.
            if writer.transport.is_closing():
                return  # dropped by `close`
            writer.write_eof()
            async with asyncio.timeout(1.0):
                while await reader.read(65536):
                    pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the peer went away, or idled / drained too slowly: nothing to answer
        except Exception:
            log.exception("metrics connection failed")
        finally:
            self._connections.discard(writer)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a peer that stopped reading: do not keep its buffer around
            else:
                writer.close()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read and answer one request; True if the connection stays open for the next."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, b"request head too large\n", keep_alive=False)
            return False
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                await self._send(writer, 400, b"incomplete request\n", keep_alive=False)
            return False
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[0] or not parts[1]:
            await self._send(writer, 400, b"malformed request line\n", keep_alive=False)
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                await self._send(writer, 400, b"malformed header\n", keep_alive=False)
                return False
            headers[name.lower()] = value.strip()
        method, target, version = parts
        head_only = method == "HEAD"
        connection = headers.get("connection", "").lower()
        keep_alive = ("keep-alive" in connection) if version == "HTTP/1.0" else ("close" not in connection)
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            keep_alive = False  # a body we do not read would be taken for the next request
        try:
            url = urlsplit(target)
        except ValueError:
            await self._send(writer, 400, b"malformed request target\n", keep_alive=False, head_only=head_only)
            return False
        if url.path != "/metrics":
            await self._send(writer, 404, b"not found; metrics are at /metrics\n", keep_alive=keep_alive, head_only=head_only)
        elif not head_only and method != "GET":
            await self._send(writer, 405, b"method not allowed\n", keep_alive=keep_alive, extra=(("Allow", "GET, HEAD"),))
        else:
            names = tuple(sorted(parse_qs(url.query).get("name[]", [])))
            compress = gzip_accepted(headers.get("accept-encoding", ""))
            try:
                content_type, body = await self._render(headers.get("accept", ""), names, compress)
            except Exception:
                log.exception("rendering metrics failed")
                await self._send(writer, 500, b"rendering metrics failed\n", keep_alive=False, head_only=head_only)
                return False
            extra = [("Content-Type", content_type)] + ([("Content-Encoding", "gzip")] if compress else [])
            await self._send(writer, 200, body, keep_alive=keep_alive, extra=extra, head_only=head_only)
        return keep_alive

    async def _render(self, accept: str, names: tuple[str, ...], compress: bool) -> tuple[str, bytes]:
        encoder, content_type = choose_encoder(accept)
        key = (content_type, names, compress)
        future = self._rendering.get(key)
        if future is None:
            registry = self.registry.restricted_registry(names) if names else self.registry

            def render() -> bytes:
                output = encoder(registry)
                return gzip.compress(output) if compress else output

            future = asyncio.get_running_loop().run_in_executor(self._executor, render)
            self._rendering[key] = future
            future.add_done_callback(lambda done: self._rendered(key, done))
        # shield: a scraper that hangs up must not cancel the rendering the others wait for
        return content_type, await asyncio.shield(future)

    def _rendered(self, key: tuple, future: asyncio.Future[bytes]) -> None:
        self._rendering.pop(key, None)
        if not future.cancelled():
            future.exception()  # every waiter may have hung up: mark it seen so asyncio does not log it again

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        keep_alive: bool,
        extra: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
        head_only: bool = False,
    ) -> None:
        if writer.transport.is_closing():
            raise ConnectionResetError  # dropped by `close` (or the peer) while the answer was being made
        headers = [("Content-Length", str(len(body))), ("Connection", "keep-alive" if keep_alive else "close")]
        if not any(name == "Content-Type" for name, _ in extra):
            headers.append(("Content-Type", "text/plain; charset=utf-8"))
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}"] + [f"{n}: {v}" for n, v in [*extra, *headers]]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        async with asyncio.timeout(self.idle_timeout):  # a scraper that does not read is dropped, not waited for
            await writer.drain()
