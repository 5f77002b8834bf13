"""Listening addresses: how one is written, and whether its port is free before the server binds it."""

from __future__ import annotations

import errno
import socket

from server.errors import SlimserveError

__all__ = ["bind_error", "check_port_free", "host_port", "reachable_host"]

# Why a bind failed, said so that the fix is obvious; anything else falls back to the OS's words.
_REASONS = {
    errno.EADDRINUSE: "address in use (is another server running? pick {flag})",
    errno.EADDRNOTAVAIL: "address not available on this machine (check --host)",
    errno.EACCES: "permission denied (ports below 1024 need privileges; pick {flag})",
}

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def host_port(host: str, port: int) -> str:
    """`127.0.0.1:8001`, `[::1]:8001`: IPv6 literals go in brackets, as gRPC targets and URLs want them."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def reachable_host(host: str) -> str:
    """An address a client on this machine can dial: loopback for a wildcard (every interface) host."""
    bare = host.strip("[]")
    return _WILDCARDS.get(bare, bare)


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """Raise a one-line `SlimserveError` unless some address of `host` can bind `port` (0 always can).

    Checked before the models load, so a busy port fails in a moment; gRPC itself would log a line of
    its own and raise a bare RuntimeError. A port taken in between is still caught where it is bound.
    """
    if port == 0:
        return
    shown = host_port(host, port)
    try:
        found = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SlimserveError(f"cannot listen on {shown} for {what}: unknown host ({exc.strerror}; check --host)") from None
    failure: OSError | None = None
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as probe:
            # As the servers do: a port whose last connection is in TIME_WAIT can be bound.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                return  # gRPC listens if any resolved address binds
            except OSError as exc:
                failure = exc
    assert failure is not None  # getaddrinfo returns at least one address or raises
    raise bind_error(failure, shown, what, flag)


def bind_error(failure: OSError, shown: str, what: str, flag: str) -> SlimserveError:
    """A failed bind as one line that names the fix (`shown` is `host_port(...)`)."""
    if isinstance(failure, socket.gaierror):
        return SlimserveError(f"cannot listen on {shown} for {what}: unknown host ({failure.strerror}; check --host)")
    reason = _REASONS.get(failure.errno or 0, "{error}").format(flag=flag, error=(failure.strerror or str(failure)).lower())
    return SlimserveError(f"cannot listen on {shown} for {what}: {reason}")
