"""The client's errors; the command line turns each into one line on stderr and exit status 1.

Hierarchy:

    ClientError              anything the client cannot do; `str()` is the one-line reason
    ├── ServerError          the server answered with a non-OK gRPC status (`code`, `message`)
    ├── UnreachableError     nothing answered at the gRPC address (`url`)
    ├── MetricsError         the metrics endpoint could not be read or parsed (`url`)
    └── DataError            an input file or array does not fit the model
"""

from __future__ import annotations

__all__ = ["ClientError", "ServerError", "UnreachableError", "MetricsError", "DataError"]


class ClientError(Exception):
    """Base error; the message is a single line fit for stderr."""


class ServerError(ClientError):
    """The server refused or failed the call; `code` is the gRPC status name, e.g. `NOT_FOUND`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class UnreachableError(ClientError):
    """No server answered at `url`."""

    def __init__(self, url: str, reason: str = "") -> None:
        text = f"could not reach the server at {url}"
        super().__init__(f"{text} ({reason})" if reason else text)
        self.url = url
        self.reason = reason


class MetricsError(ClientError):
    """The Prometheus endpoint at `url` could not be read."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"could not read metrics at {url} ({reason})")
        self.url = url
        self.reason = reason


class DataError(ClientError):
    """Input data that cannot be sent: a missing file, a wrong key, a shape the model does not take."""
