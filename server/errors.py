"""Errors that carry their gRPC status; translated once, at the edge (`servicer.py`).

Hierarchy:

    SlimserveError            INTERNAL (message hidden from the caller)
    ├── InvalidInput          INVALID_ARGUMENT: the request is malformed; the message says how to fix it
    ├── NotFound              NOT_FOUND: unknown model or variant
    ├── Unavailable           UNAVAILABLE: the model is not loaded / the server is stopping
    ├── ResourceExhausted     RESOURCE_EXHAUSTED: a queue or limit is full; retry later
    ├── DeadlineExceeded      DEADLINE_EXCEEDED: the caller's deadline passed before the work ran
    ├── PermissionDenied      PERMISSION_DENIED / UNAUTHENTICATED
    ├── RepositoryError       FAILED_PRECONDITION: the repository on disk is unusable (bad manifest, sha256)
    └── FailedPrecondition    FAILED_PRECONDITION: this server cannot do that here (e.g. an extra is not installed)
"""

from __future__ import annotations

import grpc

__all__ = [
    "SlimserveError",
    "InvalidInput",
    "NotFound",
    "Unavailable",
    "ResourceExhausted",
    "DeadlineExceeded",
    "PermissionDenied",
    "Unauthenticated",
    "RepositoryError",
    "FailedPrecondition",
]


class SlimserveError(Exception):
    """Base error; `public` says whether the message may be shown to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    public: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SlimserveError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    public = True


class NotFound(SlimserveError):
    code = grpc.StatusCode.NOT_FOUND
    public = True


class Unavailable(SlimserveError):
    code = grpc.StatusCode.UNAVAILABLE
    public = True


class ResourceExhausted(SlimserveError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    public = True


class DeadlineExceeded(SlimserveError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    public = True


class PermissionDenied(SlimserveError):
    code = grpc.StatusCode.PERMISSION_DENIED
    public = True


class Unauthenticated(SlimserveError):
    code = grpc.StatusCode.UNAUTHENTICATED
    public = True


class RepositoryError(SlimserveError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    public = True


class FailedPrecondition(SlimserveError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    public = True
