"""A typed client for slimserve's KServe v2 gRPC API, wrapping `tritonclient.grpc`; a variant is a version."""

from __future__ import annotations

from contextlib import contextmanager
from types import TracebackType
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from clients.address import parse_target
from clients.channel import channel_args, dial_target
from clients.errors import ClientError, ServerError, UnreachableError
from clients.model import ModelInfo, Prediction, TensorInfo, VariantStatistics

__all__ = ["Client", "status_code"]

# What gRPC core says when no connection could be made (as opposed to a server answering UNAVAILABLE).
_CONNECT_FAILURES = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "name resolution",
    "socket closed",
    "connection reset",
    "connect failed",
    "no route to host",
    "errors resolving",
    "backends failing",  # round_robin: every replica is down or unhealthy
)


def status_code(exc: InferenceServerException) -> str:
    """`StatusCode.NOT_FOUND` -> `NOT_FOUND`; errors raised inside tritonclient have no status: `CLIENT`."""
    status = exc.status()
    if not status:
        return "CLIENT"
    return str(status).removeprefix("StatusCode.")


def _first_line(exc: InferenceServerException) -> str:
    lines = str(exc.message() or "").strip().splitlines()
    return lines[0] if lines else "(no message)"


def _tensor(t: Any) -> TensorInfo:
    return TensorInfo(t.name, t.datatype, tuple(int(d) for d in t.shape))


def _triton_defaults() -> list[tuple[str, Any]]:
    """The channel arguments tritonclient sets itself, which passing our own `channel_args` would drop."""
    keepalive = triton.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
    ]


class Client:
    """Synchronous client of one server or several replicas; errors come out as `ServerError` or
    `UnreachableError`.

    `url` is `host[:port]`, several of them comma-separated, or `dns:///name[:port]` (port 8001 when left
    out); requests are spread over the replicas one by one (round_robin), skipping any that is down or
    draining, and an idempotent call that meets a replica as it stops is retried on another.
    """

    def __init__(self, url: str, timeout: float | None = 30.0) -> None:
        target = parse_target(url)  # AddressError (a ClientError) for what cannot be an address
        self.url = str(target)
        self.timeout = timeout
        dial, authority = dial_target(target)
        try:
            self._triton = triton.InferenceServerClient(
                dial, channel_args=_triton_defaults() + channel_args(authority)
            )
        except InferenceServerException as exc:
            raise UnreachableError(self.url, _first_line(exc)) from None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._triton.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate tritonclient's exception into ours, once, here."""
        try:
            yield
        except InferenceServerException as exc:
            code = status_code(exc)
            message = _first_line(exc)
            if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and any(s in message.lower() for s in _CONNECT_FAILURES):
                raise UnreachableError(self.url, message) from None
            if code == "CLIENT":
                raise ClientError(message) from None
            raise ServerError(code, message) from None

    # ---- server and model queries ----
    def check_live(self, timeout: float = 10.0) -> None:
        """Raise `UnreachableError` unless a server answers ServerLive at the URL within `timeout` seconds."""
        limit = min(timeout, self.timeout) if self.timeout else timeout
        with self._errors():
            try:
                live = self._triton.is_server_live(client_timeout=limit)
            except InferenceServerException as exc:
                if status_code(exc) in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise UnreachableError(self.url, _first_line(exc)) from None
                raise
        if not live:
            raise ServerError("UNAVAILABLE", f"the server at {self.url} says it is not live")

    def model(self, name: str, variant: str = "") -> ModelInfo:
        """ModelMetadata: inputs, outputs and (without `variant`) every variant of the model."""
        with self._errors():
            meta = self._triton.get_model_metadata(name, variant, client_timeout=self.timeout)
            try:
                config = self._triton.get_model_config(name, variant, client_timeout=self.timeout).config
                task = config.metric_tags.get("task", "")
            except InferenceServerException:  # a KServe server without Triton's ModelConfig extension
                task = ""
        return ModelInfo(
            name=meta.name,
            platform=meta.platform,
            variants=tuple(meta.versions),
            inputs=tuple(_tensor(t) for t in meta.inputs),
            outputs=tuple(_tensor(t) for t in meta.outputs),
            task=task,
        )

    def variants(self, name: str) -> list[str]:
        """The model's variants, in the server's order."""
        return list(self.model(name).variants)

    def repository(self) -> list[tuple[str, str, str]]:
        """RepositoryIndex as (model, variant, state) rows."""
        with self._errors():
            index = self._triton.get_model_repository_index(client_timeout=self.timeout)
        return [(m.name, m.version, m.state) for m in index.models]

    def statistics(self, name: str, variant: str = "") -> list[VariantStatistics]:
        """ModelStatistics for every variant of the model (or one)."""
        with self._errors():
            reply = self._triton.get_inference_statistics(name, variant, client_timeout=self.timeout)
        out = []
        for s in reply.model_stats:
            st = s.inference_stats
            memory = sum(m.byte_size for m in s.memory_usage)
            out.append(VariantStatistics(
                model=s.name, variant=s.version, success_count=st.success.count, success_ns=st.success.ns,
                fail_count=st.fail.count, queue_ns=st.queue.ns, compute_count=st.compute_infer.count,
                compute_ns=st.compute_infer.ns, inference_count=s.inference_count,
                execution_count=s.execution_count, memory_bytes=memory,
            ))
        return out

    # ---- inference ----
    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        variant: str = "",
        outputs: Sequence[str] | None = None,
    ) -> Prediction:
        """Run one request; an empty `variant` lets the model's routing policy choose."""
        with self._errors():
            wire = []
            for name, array in inputs.items():
                tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(array)
                wire.append(tensor)
            wanted = [triton.InferRequestedOutput(o) for o in outputs] if outputs else None
            result = self._triton.infer(
                model, wire, model_version=variant, outputs=wanted, client_timeout=self.timeout
            )
            response = result.get_response()
            arrays = {t.name: result.as_numpy(t.name) for t in response.outputs}
        return Prediction(model=response.model_name, variant=response.model_version, outputs=arrays)
