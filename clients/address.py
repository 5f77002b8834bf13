"""Server addresses as users type them: `host[:port]`, several of them comma-separated, or `dns:///name[:port]`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from clients.errors import ClientError

__all__ = ["DEFAULT_GRPC_PORT", "Address", "AddressError", "Target", "parse_address", "parse_target",
           "with_default_port"]

DEFAULT_GRPC_PORT = 8001  # the server's (and Triton's) default

# RFC 1123 host names (plus `_`, which Kubernetes and /etc/hosts tolerate); a trailing dot is a rooted name.
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_FORMS = "HOST[:PORT], HOST[:PORT],HOST[:PORT],... or dns:///NAME[:PORT]"


class AddressError(ClientError, ValueError):
    """An address that cannot be dialled as written; the message is one line that quotes it."""


@dataclass(frozen=True)
class Address:
    """One `host:port`; `host` is a name or an IP literal, IPv6 without its brackets."""

    host: str
    port: int

    @property
    def host_text(self) -> str:
        """The host as it goes before `:port` (and into a URL): IPv6 literals in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.host_text}:{self.port}"


@dataclass(frozen=True)
class Target:
    """Where the client sends requests: one or more addresses, or one name handed to gRPC's dns resolver.

    `dns` is the scheme and authority (`dns:///` or `dns://DNS-SERVER/`) when the user asked for gRPC's
    resolver: it finds every A/AAAA record of the name (a headless Service's pods) and looks again whenever
    a connection drops, whereas names in a list of addresses are resolved once, when the client starts.
    """

    addresses: tuple[Address, ...]
    dns: str | None = None

    def __str__(self) -> str:
        if self.dns is not None:
            return f"{self.dns}{self.addresses[0]}"
        return ",".join(str(a) for a in self.addresses)


def _port(text: str, given: str, default: int) -> int:
    if not given:  # `host:` means the default port, as it always has
        return default
    if not given.isdigit() or not 0 < int(given) < 65536:
        raise AddressError(f"{text!r}: the port {given!r} is not a number from 1 to 65535")
    return int(given)


def _host(text: str, host: str) -> str:
    if not host:
        raise AddressError(f"{text!r}: the host is missing")
    if re.fullmatch(r"[\d.]+", host):  # digits and dots are an IPv4 literal, never a name to look up
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise AddressError(f"{text!r}: {host!r} is not an IPv4 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise AddressError(f"{text!r}: {host!r} is not a host name or IP address")
    return host


def _ipv6(text: str, host: str) -> str:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise AddressError(f"{text!r}: {host!r} is not an IPv6 address") from None
    return host


def parse_address(text: str, port: int = DEFAULT_GRPC_PORT) -> Address:
    """`localhost` -> localhost:8001, `[::1]` or `::1` -> [::1]:8001; an address with a port keeps it."""
    text = text.strip()
    if "://" in text or text.startswith("dns:"):
        raise AddressError(f"{text!r}: write HOST[:PORT] (no scheme), or dns:///NAME[:PORT] as the whole target")
    if text.startswith("["):  # [v6] or [v6]:port
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise AddressError(f"{text!r}: an IPv6 address goes in brackets, as [::1]:{port}")
        return Address(_ipv6(text, host), _port(text, rest[1:], port))
    if text.count(":") > 1:  # a bare IPv6 literal: its colons are not a port separator
        return Address(_ipv6(text, text), port)
    host, _, given = text.partition(":")
    return Address(_host(text, host), _port(text, given, port))


def parse_target(text: str, port: int = DEFAULT_GRPC_PORT) -> Target:
    """`host1:8001,host2:8001` (each port defaulting to `port`) or `dns:///name[:port]`; raises `AddressError`."""
    text = text.strip()
    if text.startswith("dns:"):
        rest = text[4:]
        if rest.startswith("//"):  # dns://[DNS-SERVER]/name
            authority, slash, name = rest[2:].partition("/")
            if not slash:
                raise AddressError(f"{text!r}: write dns:///NAME[:PORT] (three slashes)")
        else:  # dns:name, which gRPC also accepts
            authority, name = "", rest
        if not name.strip():
            raise AddressError(f"{text!r}: the name is missing; expected dns:///NAME[:PORT]")
        if "," in name:
            raise AddressError(f"{text!r}: a dns: target names one host; list addresses without dns: instead")
        return Target((parse_address(name, port),), dns=f"dns://{authority}/")
    items = text.split(",")
    if not text or any(not item.strip() for item in items):
        raise AddressError(f"{text!r} is not a server address; expected {_FORMS}")
    return Target(tuple(parse_address(item, port) for item in items))


def with_default_port(url: str, port: int = DEFAULT_GRPC_PORT) -> str:
    """One address with its port filled in: `localhost` -> `localhost:8001`, `::1` -> `[::1]:8001`.

    Without this, gRPC dials port 443 for a bare host, and the server is not there.
    """
    return str(parse_address(url, port))
