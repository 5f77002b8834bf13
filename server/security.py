"""Transport security: TLS / mutual TLS credentials and bearer-token checks in a gRPC interceptor."""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

import grpc

from server.settings import Settings

__all__ = ["AuthInterceptor", "server_credentials", "OPEN_PREFIXES", "ADMIN_PREFIXES"]

# Probes must work without secrets: health checks, reflection and liveness/readiness.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
# Calls that change or reveal the repository need the admin token.
ADMIN_PREFIXES = (
    "/inference.GRPCInferenceService/RepositoryIndex",
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/slimserve.v1.CompressionService/",
)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from PEM files; with a client CA, clients must present a certificate it signed (mTLS)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    chain = settings.tls_cert.read_bytes()
    key = settings.tls_key.read_bytes()
    if settings.tls_client_ca is not None:
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=settings.tls_client_ca.read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials([(key, chain)])


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks `authorization: Bearer <token>`; the admin token also opens every inference call.

    Admin calls need the admin token; with none configured, they need the inference token (never nothing).
    """

    def __init__(self, token: str | None, admin_token: str | None) -> None:
        self._token = token.encode() if token else None
        self._admin = admin_token.encode() if admin_token else None

    @staticmethod
    def _bearer(details: grpc.HandlerCallDetails) -> bytes | None:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                if text.lower().startswith("bearer "):
                    return text[7:].strip().encode()
        return None

    def _matches(self, given: bytes | None, expected: bytes | None) -> bool:
        return given is not None and expected is not None and hmac.compare_digest(given, expected)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        given = self._bearer(details)
        if method.startswith(ADMIN_PREFIXES):
            # Without an admin token the inference token guards admin calls too: a server that asks for
            # a token must never leave unload/load/compress open to callers without one.
            expected = self._admin if self._admin is not None else self._token
            if self._matches(given, expected):
                return await continuation(details)
            return _deny(*self._refusal(given, "the admin token" if self._admin is not None else "a valid token"))
        if self._token is None or self._matches(given, self._token) or self._matches(given, self._admin):
            return await continuation(details)
        return _deny(*self._refusal(given, "a valid token"))

    @staticmethod
    def _refusal(given: bytes | None, what: str) -> tuple[grpc.StatusCode, str]:
        if given is None:
            return grpc.StatusCode.UNAUTHENTICATED, f"this call needs {what}: send metadata 'authorization: Bearer <token>'"
        return grpc.StatusCode.PERMISSION_DENIED, f"the bearer token sent is not {what}"
