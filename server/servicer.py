"""The gRPC edge: a thin `inference.GRPCInferenceService` over the data plane; errors are mapped here, once."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc
from server import __version__
from server.codec import encode_response
from server.dataplane import DataPlane
from server.errors import InvalidInput, NotFound, SlimserveError, Unavailable
from server.registry import LoadedModel
from server.wire import bounded_message, decode

__all__ = ["InferenceServicer", "ServerState", "grpc_errors"]

log = logging.getLogger(__name__)

EXTENSIONS = ["model_repository", "model_configuration", "statistics", "slimserve_variants"]

_DATATYPE_ENUM = {
    "BOOL": pb.TYPE_BOOL, "UINT8": pb.TYPE_UINT8, "UINT16": pb.TYPE_UINT16, "UINT32": pb.TYPE_UINT32,
    "UINT64": pb.TYPE_UINT64, "INT8": pb.TYPE_INT8, "INT16": pb.TYPE_INT16, "INT32": pb.TYPE_INT32,
    "INT64": pb.TYPE_INT64, "FP16": pb.TYPE_FP16, "FP32": pb.TYPE_FP32, "FP64": pb.TYPE_FP64,
    "BYTES": pb.TYPE_STRING,
}

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


class ServerState:
    """Readiness and in-flight accounting shared by the servicer, health service and shutdown."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.last_refused = 0.0  # monotonic time of the last call refused while draining
        self.in_flight = 0
        self.accepted = 0
        self.completed = 0
        self.failed = 0


def grpc_errors(method: Handler) -> Handler:
    """Translate slimserve errors to status codes; anything else is INTERNAL without internals leaking."""

    @functools.wraps(method)
    async def wrapper(self: "InferenceServicer", request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except SlimserveError as exc:
            code = exc.code
            message = exc.message if exc.public else "internal error; the server log has the details"
            if not exc.public:
                log.error("%s failed: %s", method.__name__, exc.message)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception:
            incident = uuid.uuid4().hex[:8]
            log.exception("%s failed (incident %s)", method.__name__, incident)
            code, message = grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see the server log"
        # Abort after the except blocks, with the request dropped: grpc keeps the AbortError in a reference
        # cycle that only the cyclic GC frees. Raised inside an except block it would chain our exception, whose
        # traceback holds every frame of the failed call (the request, decoded arrays: tens of MB each time).
        del request
        await context.abort(code, bounded_message(message))

    return wrapper  # type: ignore[return-value]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """KServe v2 + Triton extensions; a variant is a model version."""

    def __init__(self, dataplane: DataPlane, state: ServerState) -> None:
        self.dataplane = dataplane
        self.registry = dataplane.registry
        self.state = state
        self.max_elements = self.registry.settings.max_elements

    # ---- health and metadata ----
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Ready once the startup load is done, until shutdown. A model that loads later (poll, RepositoryModelLoad)
        # must not take the whole replica out of its Service; ModelReady answers per model.
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self.registry.models.get(request.name)
        ready = model is not None and (not request.version or request.version in model.variants)
        return pb.ModelReadyResponse(ready=ready and self.state.ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="slimserve", version=__version__, extensions=EXTENSIONS)

    def _model(self, name: str, version: str) -> LoadedModel:
        if not name:
            raise InvalidInput("name is empty; name the model (see RepositoryIndex)")
        model = self.registry.get(name)
        if version:
            model.variant(version)
        return model

    @grpc_errors
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self._model(request.name, request.version)
        spec = model.spec
        reply = pb.ModelMetadataResponse(
            name=spec.name,
            versions=[request.version] if request.version else list(model.variants),
            platform="onnxruntime_onnx",
        )
        for t in spec.inputs:
            reply.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        if model.text is not None:  # the alternative input: strings, tokenized by the server
            reply.inputs.add(name=model.text.config.text_input, datatype="BYTES", shape=[-1])
        for t in spec.outputs:
            reply.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        return reply

    @grpc_errors
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self._model(request.name, request.version)
        spec = model.spec
        variant = request.version or model.router.policy.variant or spec.default_variant
        batchable = all(t.shape and t.shape[0] == -1 for t in spec.inputs + spec.outputs)
        settings = self.registry.settings
        config = pb.ModelConfig(
            name=spec.name,
            platform="onnxruntime_onnx",
            backend="onnxruntime",
            max_batch_size=settings.max_batch_size if batchable else 0,
            default_model_filename=str(model.variants[variant].spec.path.relative_to(spec.folder)),
        )
        for t in spec.inputs:
            config.input.add(name=t.name, data_type=_DATATYPE_ENUM.get(t.datatype, pb.TYPE_INVALID),
                             dims=list(t.shape[1:] if batchable else t.shape))
        for t in spec.outputs:
            config.output.add(name=t.name, data_type=_DATATYPE_ENUM.get(t.datatype, pb.TYPE_INVALID),
                              dims=list(t.shape[1:] if batchable else t.shape))
        config.instance_group.add(name=spec.name, count=settings.workers, kind=pb.ModelInstanceGroup.KIND_CPU)
        if batchable:
            config.dynamic_batching.max_queue_delay_microseconds = 0
        config.metric_tags["task"] = spec.task
        config.metric_tags["variant"] = variant
        return pb.ModelConfigResponse(config=config)

    @grpc_errors
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.name:
            models = [self._model(request.name, request.version)]
        else:
            models = list(self.registry.models.values())
        reply = pb.ModelStatisticsResponse()
        for model in models:
            for vname, v in model.variants.items():
                if request.version and vname != request.version:
                    continue
                s = v.stats
                entry = reply.model_stats.add(
                    name=model.spec.name, version=vname, last_inference=s.last_inference_ms,
                    inference_count=s.inference_count, execution_count=s.execution_count,
                )
                st = entry.inference_stats
                st.success.count, st.success.ns = s.success_count, s.success_ns
                st.fail.count, st.fail.ns = s.fail_count, s.fail_ns
                st.queue.count, st.queue.ns = s.queue_count, s.queue_ns
                st.compute_infer.count, st.compute_infer.ns = s.compute_count, s.compute_ns
                for rows, (count, ns) in sorted(s.batches.items()):
                    b = entry.batch_stats.add(batch_size=rows)
                    b.compute_infer.count, b.compute_infer.ns = count, ns
                entry.memory_usage.add(type="CPU", id=0, byte_size=v.session.stats.memory_bytes)
        return reply

    # ---- inference ----
    @grpc_errors
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        state = self.state
        if state.draining:
            state.last_refused = time.monotonic()  # shutdown waits for callers to stop arriving
            raise Unavailable("the server is shutting down; retry on another replica")
        state.accepted += 1
        state.in_flight += 1
        try:
            remaining = context.time_remaining()
            deadline = time.monotonic() + remaining if remaining is not None else None
            decoded = await decode(request, self.max_elements, deadline)  # large bodies off the event loop
            response = encode_response(await self.dataplane.infer(decoded))
        except BaseException:
            state.failed += 1
            raise
        finally:
            state.in_flight -= 1
        state.completed += 1
        return response

    # ---- repository ----
    @grpc_errors
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        reply = pb.RepositoryIndexResponse()
        names = set(self.registry.states)
        try:
            names |= set(self.registry.repository.model_names())
        except SlimserveError:
            pass
        for name in sorted(names):
            state, reason = self.registry.states.get(name, ("UNAVAILABLE", "not loaded"))
            model = self.registry.models.get(name)
            if model is not None:
                for vname in model.variants:
                    reply.models.add(name=name, version=vname, state="READY")
                if not request.ready:
                    for vname, why in model.unavailable.items():
                        reply.models.add(name=name, version=vname, state="UNAVAILABLE", reason=why)
            elif not request.ready:
                reply.models.add(name=name, version="", state=state, reason=reason)
        return reply

    @grpc_errors
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.model_name:
            raise InvalidInput("model_name is empty; name the model folder to load")
        await self.registry.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.model_name:
            raise InvalidInput("model_name is empty; name the model to unload")
        if request.model_name not in self.registry.models and request.model_name not in self.registry.states:
            raise NotFound(f"unknown model {request.model_name!r:.100}")
        await self.registry.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
