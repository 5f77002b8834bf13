"""Client side of slimserve: a typed gRPC client, a metrics reader, and the `infer`, `compare`, `load`,
`compress`, `job` and `routing` commands.

`Client` is imported lazily: it loads `tritonclient.grpc`, whose generated `inference` protos collide with the
server's own in one process, so `import clients.metrics` (or `clients.inputs`) must not pull it in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clients.errors import ClientError, DataError, MetricsError, ServerError, UnreachableError
from clients.metrics import MetricsSnapshot, default_metrics_url, fetch_metrics, parse_metrics
from clients.model import ModelInfo, Prediction, TensorInfo, VariantStatistics

if TYPE_CHECKING:
    from clients.client import Client

__all__ = [
    "Client",
    "ModelInfo",
    "Prediction",
    "TensorInfo",
    "VariantStatistics",
    "ClientError",
    "DataError",
    "MetricsError",
    "ServerError",
    "UnreachableError",
    "MetricsSnapshot",
    "default_metrics_url",
    "fetch_metrics",
    "parse_metrics",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from clients.client import Client

        return Client
    raise AttributeError(f"module 'clients' has no attribute {name!r}")
