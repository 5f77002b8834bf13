"""`slimserve.v1.CompressionService`: list variants, make int8 variants on the fly, change routing live."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import grpc

from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc
from server.errors import SlimserveError
from server.jobs import Job, JobManager
from server.livereport import arm_stats, live_quality, routing_changes
from server.manifest_io import update_manifest
from server.registry import LoadedModel, Registry
from server.router import Router, RoutingPolicy, parse_policy
from server.servicer import grpc_errors

__all__ = ["CompressionServicer"]

_STATES = {"PENDING": cpb.Job.PENDING, "RUNNING": cpb.Job.RUNNING, "SUCCEEDED": cpb.Job.SUCCEEDED,
           "FAILED": cpb.Job.FAILED}


def _variant_info(model: LoadedModel | None, name: str, entry: dict[str, Any]) -> Any:
    loaded = model.variants.get(name) if model else None
    return cpb.VariantInfo(
        name=name,
        kind=str(entry.get("kind", name)),
        parent=entry.get("parent") or "",
        sha256=entry.get("sha256", ""),
        bytes=int(entry.get("bytes", 0)),
        parameters=int(entry.get("parameters", 0)),
        macs=int(entry.get("macs") or 0),
        quality={k: float(v) for k, v in (entry.get("quality") or {}).items() if isinstance(v, (int, float))},
        p50_ms_batch1=float(((entry.get("latency") or {}).get("batch_1") or {}).get("p50_ms") or 0.0),
        loaded=loaded is not None,
        memory_bytes=loaded.session.stats.memory_bytes if loaded else 0,
        recipe_json=json.dumps(entry.get("recipe") or {}),
        live=live_quality(model.router, name) if model else None,
        batch_invariant=loaded.session.batch_invariant if loaded else entry.get("batch_invariant") is True,
    )


def _job_message(job: Job) -> Any:
    reply = cpb.Job(id=job.id, model=job.model, variant=job.variant, state=_STATES[job.state], step=job.step,
                    message=job.message, started_unix=job.started, finished_unix=job.finished,
                    recipe=job.recipe, parent=job.parent, percent=job.percent, quality=job.quality)
    if job.result is not None:
        reply.result.CopyFrom(_variant_info(None, job.variant, job.result))
    return reply


def _routing_message(model: str, policy: RoutingPolicy, router: Router) -> Any:
    return cpb.Routing(
        model=model, policy=policy.policy, variant=policy.variant or "", weights=dict(policy.weights),
        sticky_parameter=policy.sticky_parameter or "", max_drop=policy.max_drop,
        shadow_fraction=policy.shadow_fraction, chosen=router.choose("", {}) if policy.policy != "split" else "",
        min_samples=policy.min_samples, demoted=router.live.demoted() if policy.policy == "auto" else [],
        changes=routing_changes(router), arms=arm_stats(router),
    )


class CompressionServicer(cpb_grpc.CompressionServiceServicer):
    def __init__(self, registry: Registry, jobs: JobManager) -> None:
        self.registry = registry
        self.jobs = jobs

    @grpc_errors
    async def ListVariants(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self.registry.get(request.model)
        reply = cpb.ListVariantsResponse(model=model.spec.name, default_variant=model.spec.default_variant)
        for name, entry in model.spec.manifest.get("variants", {}).items():
            reply.variants.append(_variant_info(model, name, entry))
        return reply

    @grpc_errors
    async def CreateVariant(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        job = self.jobs.create(request.model, request.name, request.recipe, request.parent, dict(request.params),
                               request.data, request.runner)
        return _job_message(job)

    @grpc_errors
    async def GetJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return _job_message(self.jobs.get(request.id))

    async def WatchJob(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            job = self.jobs.get(request.id)
        except SlimserveError as exc:  # streaming handlers cannot use the unary error wrapper
            await context.abort(exc.code, exc.message)
            return
        while True:
            waiter = job.changed
            yield _job_message(job)
            if job.state in ("SUCCEEDED", "FAILED"):
                return
            try:
                await asyncio.wait_for(waiter.wait(), timeout=5.0)
            except asyncio.TimeoutError:
                pass

    @grpc_errors
    async def GetRouting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self.registry.get(request.model)
        return _routing_message(model.spec.name, model.router.policy, model.router)

    @grpc_errors
    async def SetRouting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        r = request.routing
        model = self.registry.get(r.model)
        routing: dict[str, Any] = {"policy": r.policy or "fixed"}
        if r.variant:
            routing["variant"] = r.variant
        if r.weights:
            routing["weights"] = dict(r.weights)
        if r.sticky_parameter:
            routing["sticky_parameter"] = r.sticky_parameter
        if r.policy == "auto":
            routing["max_drop"] = r.max_drop
        if r.shadow_fraction:
            routing["shadow"] = {"fraction": r.shadow_fraction}
        if r.min_samples:
            routing["min_samples"] = r.min_samples
        policy = parse_policy(routing, model.spec)  # validate before anything changes
        router = Router(model.spec, policy, unavailable=model.unavailable, live=model.router.live)
        update_manifest(model.spec.folder, lambda m: m.__setitem__("routing", routing))
        model.router = router
        return _routing_message(model.spec.name, policy, router)
