"""gRPC addresses as users type them: `localhost` means `localhost:8001`, IPv6 literals go in brackets."""

from __future__ import annotations

__all__ = ["DEFAULT_GRPC_PORT", "with_default_port"]

DEFAULT_GRPC_PORT = 8001  # the server's (and Triton's) default


def with_default_port(url: str, port: int = DEFAULT_GRPC_PORT) -> str:
    """`localhost` -> `localhost:8001`, `[::1]` or `::1` -> `[::1]:8001`; an address with a port is kept.

    Without this, gRPC dials port 443 for a bare host, and the server is not there.
    """
    url = url.strip()
    if url.startswith("["):  # [v6] or [v6]:port
        host, _, rest = url[1:].partition("]")
        return url if rest.startswith(":") and rest[1:] else f"[{host}]:{port}"
    if url.count(":") > 1:  # a bare IPv6 literal: its colons are not a port separator
        return f"[{url}]:{port}"
    host, colon, given = url.partition(":")
    return url if colon and given else f"{host}:{port}"
