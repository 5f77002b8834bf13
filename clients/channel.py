"""How the client's gRPC channel dials a target: per-request round_robin, health-checked replicas, retries."""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

from clients.address import Address, Target
from clients.errors import UnreachableError

__all__ = ["IDEMPOTENT_METHODS", "SERVICE_CONFIG", "channel_args", "dial_target", "resolve"]

INFERENCE_SERVICE = "inference.GRPCInferenceService"
RETRY_BUFFER_BYTES = 16 * 1024 * 1024
# Calls that change nothing on the server, so sending one again to another replica is safe. Repository
# load/unload and streaming inference are left out.
IDEMPOTENT_METHODS = (
    "ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady", "ModelStatistics",
    "ServerLive", "ServerReady", "ServerMetadata", "RepositoryIndex",
)

SERVICE_CONFIG: dict[str, Any] = {
    # A new replica for every request, not one connection pinned for the channel's life (pick_first).
    "loadBalancingConfig": [{"round_robin": {}}],
    # Watch grpc.health.v1 on each replica: a draining one (NOT_SERVING after SIGTERM) leaves the rotation
    # before it refuses calls, and its shutdown is not held up by callers that keep arriving.
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{
        "name": [{"service": INFERENCE_SERVICE, "method": m} for m in IDEMPOTENT_METHODS],
        # A call that reaches a replica as it stops (UNAVAILABLE while draining, or a reset connection)
        # goes again through the balancer, so to another replica.
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}


def channel_args(authority: str | None = None) -> list[tuple[str, Any]]:
    """gRPC channel arguments that turn on balancing, health checks and retries (and set the authority)."""
    args: list[tuple[str, Any]] = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        # Our config, not one a DNS TXT record might carry.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        # A call stays retryable only while its request fits this buffer (gRPC's default is 256 KiB).
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
    ]
    if authority is not None:
        # An `ipv4:`/`ipv6:` target has no name of its own; send (and, with TLS, verify) the one the user typed.
        args.append(("grpc.default_authority", authority))
    return args


def resolve(address: Address) -> list[str]:
    """The IP addresses of `address.host` (itself for an IP literal), each once, in the resolver's order."""
    if address.is_ip:
        return [address.host]
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnreachableError(str(address), f"cannot resolve {address.host}: {exc}") from None
    found: list[str] = []
    for _, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0]).partition("%")[0]  # drop an IPv6 zone: gRPC's ipv6: target cannot carry it
        if ip not in found:
            found.append(ip)
    return found


def dial_target(target: Target) -> tuple[str, str | None]:
    """The gRPC target string for `target`, and the authority to send with it (None: gRPC's own).

    One address or a `dns:` name is left to gRPC's dns resolver, which finds every address of the name. For
    several, gRPC takes only IP literals (`ipv4:a:p,b:p`), so names are resolved here, once: a name that does
    not resolve is skipped like a replica that is down, unless none does.
    """
    if len(target.addresses) == 1:  # one address, or the one name of a dns: target
        return str(target), None
    endpoints: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
    failures: list[str] = []
    authority: str | None = None
    for address in target.addresses:
        try:
            ips = resolve(address)
        except UnreachableError as exc:
            failures.append(exc.reason)
            continue
        authority = authority or str(address)
        for ip in ips:
            endpoint = (ipaddress.ip_address(ip), address.port)
            if endpoint not in endpoints:
                endpoints.append(endpoint)
    if not endpoints:
        raise UnreachableError(str(target), "; ".join(failures))
    if all(ip.version == 4 for ip, _ in endpoints):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in endpoints), authority
    # One target holds one family, so IPv4 addresses join the IPv6 ones as IPv4-mapped (::ffff:a.b.c.d).
    return "ipv6:" + ",".join(
        f"[{ip}]:{port}" if ip.version == 6 else f"[::ffff:{ip}]:{port}" for ip, port in endpoints
    ), authority
