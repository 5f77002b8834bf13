"""A typed client for slimserve's KServe v2 gRPC API, wrapping `tritonclient.grpc`; a variant is a version."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Iterator, Mapping, Sequence

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from clients.address import parse_target
from clients.channel import channel_args, dial_target
from clients.errors import ClientError, ServerError, UnreachableError
from clients.jobs import JobStatus, VariantFigures, default_variant_name, job_status, variant_figures
from clients.model import ModelInfo, Prediction, TensorInfo, VariantStatistics
from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc

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

    def __init__(self, url: str, timeout: float | None = 30.0, token: str | None = None) -> None:
        target = parse_target(url)  # AddressError (a ClientError) for what cannot be an address
        self.url = str(target)
        self.timeout = timeout
        self.token = token  # bearer token sent on compression calls (a server's --admin-token)
        dial, authority = dial_target(target)
        self._dial, self._authority = dial, authority
        self._admin_channel: grpc.Channel | None = None
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
        if self._admin_channel is not None:
            self._admin_channel.close()

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

    # ---- compression jobs (slimserve.v1.CompressionService) ----
    def _admin(self) -> cpb_grpc.CompressionServiceStub:
        """A channel of its own that sticks to one replica (pick_first): a job lives in the server that runs
        it, so creating it and watching it must reach the same one."""
        if self._admin_channel is None:
            options: list[tuple[str, Any]] = [("grpc.lb_policy_name", "pick_first")]
            if self._authority is not None:
                options.append(("grpc.default_authority", self._authority))
            self._admin_channel = grpc.insecure_channel(self._dial, options=options)
        return cpb_grpc.CompressionServiceStub(self._admin_channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    @contextmanager
    def _rpc_errors(self) -> Iterator[None]:
        """Translate a gRPC status of the compression service into our errors."""
        try:
            yield
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() is not None else "UNKNOWN"
            lines = str(exc.details() or "").strip().splitlines()
            message = lines[0] if lines else "(no message)"
            if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and any(s in message.lower() for s in _CONNECT_FAILURES):
                raise UnreachableError(self.url, message) from None
            raise ServerError(code, message) from None

    def list_variants(self, model: str) -> list[VariantFigures]:
        """Every variant of `model` with the figures its manifest records."""
        with self._rpc_errors():
            reply = self._admin().ListVariants(cpb.ListVariantsRequest(model=model), timeout=self.timeout,
                                               metadata=self._metadata())
        return [variant_figures(v) for v in reply.variants]

    def compress(
        self,
        model: str,
        recipe: str,
        name: str | None = None,
        parent: str = "",
        params: Mapping[str, str] | None = None,
        data: str = "",
        runner: str = "",
    ) -> JobStatus:
        """Start a job making variant `name` of `model` from `parent` (default teacher) with `recipe`, any recipe
        string (the server judges it); returns the job at once, PENDING or RUNNING. Without `name`, the variant
        is called `<parent>-<recipe>` (`-2`, `-3`, ... when that is taken)."""
        if name is None:
            name = default_variant_name(parent or "teacher", recipe, (v.name for v in self.list_variants(model)))
        request = cpb.CreateVariantRequest(model=model, name=name, recipe=recipe, parent=parent,
                                           params={str(k): str(v) for k, v in (params or {}).items()},
                                           data=data, runner=runner)
        with self._rpc_errors():
            job = self._admin().CreateVariant(request, timeout=self.timeout, metadata=self._metadata())
        return job_status(job)

    def routing(self, model: str) -> Any:
        """The model's routing (`slimserve.v1.Routing`): policy, choice, arms with live quality and latency, changes."""
        with self._rpc_errors():
            return self._admin().GetRouting(cpb.GetRoutingRequest(model=model), timeout=self.timeout,
                                            metadata=self._metadata())

    def set_routing(self, model: str, policy: str, variant: str = "", weights: Mapping[str, float] | None = None,
                    sticky_parameter: str = "", max_drop: float = 0.01, shadow_fraction: float = 0.0,
                    min_samples: int = 0) -> Any:
        """Replace the model's routing (written to its manifest); returns it as the server now applies it."""
        routing = cpb.Routing(model=model, policy=policy, variant=variant, weights=dict(weights or {}),
                              sticky_parameter=sticky_parameter, max_drop=max_drop, shadow_fraction=shadow_fraction,
                              min_samples=min_samples)
        with self._rpc_errors():
            return self._admin().SetRouting(cpb.SetRoutingRequest(routing=routing), timeout=self.timeout,
                                            metadata=self._metadata())

    def job(self, job_id: str) -> JobStatus:
        """The job's state now."""
        with self._rpc_errors():
            return job_status(self._admin().GetJob(cpb.GetJobRequest(id=job_id), timeout=self.timeout,
                                                   metadata=self._metadata()))

    def watch_job(self, job_id: str, idle_timeout: float | None = None) -> Iterator[JobStatus]:
        """The job as the server streams it, once on every change, in order, ending with its SUCCEEDED or FAILED
        state. The server repeats itself every few seconds while nothing changes, so with `idle_timeout` a
        silence that long is an error (the job itself has no time limit). Stopping early leaves the job running."""
        call = self._admin().WatchJob(cpb.GetJobRequest(id=job_id), metadata=self._metadata())
        silent = threading.Event()

        def give_up() -> None:
            silent.set()
            call.cancel()

        timer: threading.Timer | None = None
        try:
            while True:
                if idle_timeout is not None:
                    timer = threading.Timer(idle_timeout, give_up)
                    timer.daemon = True
                    timer.start()
                try:
                    with self._rpc_errors():
                        message = next(call, None)
                except ServerError:
                    if silent.is_set():
                        raise ClientError(f"no word from the server about job {job_id} for {idle_timeout:g} s; "
                                          f"it may still be running there") from None
                    raise
                finally:
                    if timer is not None:
                        timer.cancel()
                if message is None:
                    return
                yield job_status(message)
        finally:
            call.cancel()
