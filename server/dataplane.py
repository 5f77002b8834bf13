"""The transport-free data plane: validate, route, queue, run, and time and count every request once."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from server.datatypes import KSERVE_TO_NUMPY, numpy_to_kserve
from server.errors import InvalidInput, SlimserveError
from server.messages import InferenceRequest, InferenceResponse, Output
from server.registry import LoadedModel, LoadedVariant, Registry
from server.repository import ModelSpec
from server.shadow import agreement_rows

__all__ = ["DataPlane"]

log = logging.getLogger(__name__)

DEADLINE_SLACK_SECONDS = 0.05


def _validate_inputs(spec: ModelSpec, inputs: dict[str, np.ndarray], max_batch_size: int) -> dict[str, np.ndarray]:
    """Check names, datatypes and shapes against the manifest; return feeds in the model's dtypes."""
    expected = {t.name: t for t in spec.inputs}
    unknown = sorted(set(inputs) - set(expected))
    missing = sorted(set(expected) - set(inputs))
    if unknown or missing:
        want = ", ".join(f"'{t.name}' {t.datatype} {list(t.shape)}" for t in spec.inputs)
        what = f"unknown input {unknown[0]!r}" if unknown else f"missing input {missing[0]!r}"
        raise InvalidInput(f"model '{spec.name}': {what}; the model takes {want}")
    feeds: dict[str, np.ndarray] = {}
    batch: int | None = None
    for name, array in inputs.items():
        t = expected[name]
        dtype = KSERVE_TO_NUMPY.get(t.datatype)
        if dtype is not None and array.dtype != dtype:
            raise InvalidInput(
                f"input '{name}': datatype {numpy_to_kserve(array.dtype)}, but model '{spec.name}' expects {t.datatype}"
            )
        if array.ndim != len(t.shape) or any(w != -1 and w != g for w, g in zip(t.shape, array.shape)):
            raise InvalidInput(
                f"input '{name}': shape {list(array.shape)} does not fit the model's shape {list(t.shape)} "
                f"(-1 = any size)"
            )
        if t.shape and t.shape[0] == -1:
            rows = array.shape[0]
            if batch is not None and rows != batch:
                raise InvalidInput(f"inputs disagree on the batch size ({batch} vs {rows} rows in '{name}')")
            batch = rows
            if rows == 0:
                raise InvalidInput(f"input '{name}': the batch is empty; send at least one row")
            if rows > max_batch_size:
                raise InvalidInput(
                    f"input '{name}': batch of {rows} rows is larger than the server's limit of {max_batch_size} "
                    f"(--max-batch-size); split the request"
                )
        feeds[name] = array
    return feeds


class DataPlane:
    """What every transport (gRPC today) calls for inference; metadata queries read the registry directly."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.max_batch_size = registry.settings.max_batch_size

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        started = time.perf_counter()
        try:
            model = self.registry.get(request.model)
            variant_name = model.router.choose(request.variant, request.parameters)
            variant = model.variant(variant_name)
        except SlimserveError as exc:
            # Label unknown names with a fixed placeholder: callers must not be able to grow the label set.
            known = request.model in self.registry.models
            self.registry.metrics.count(request.model if known else "_unknown", "_unknown", exc.code.name)
            raise
        try:
            inputs = request.inputs
            if model.text is not None and model.text.config.text_input in inputs:
                inputs = self._tokenize(model, inputs)
            feeds = _validate_inputs(model.spec, inputs, self.max_batch_size)
            wanted = self._requested_outputs(model, request.outputs)
            arrays, timing = await variant.batcher.submit(feeds, request.deadline)
        except BaseException as exc:
            self._record_failure(variant, started, exc, request.deadline)
            raise
        elapsed = time.perf_counter() - started
        self._record_success(variant, elapsed, timing.queue_seconds, timing.compute_seconds, feeds)
        model.router.live.observe_latency(variant_name, elapsed)
        names = variant.session.output_names
        by_name = dict(zip(names, arrays))
        plan = model.router.shadow_plan(variant_name)
        if plan:
            self.registry.shadow.spawn(self._shadow(model, variant_name, plan, feeds, arrays[0]))
        outputs = [Output(name, self._datatype(model, name), by_name[name]) for name in wanted]
        return InferenceResponse(model=model.spec.name, variant=variant_name, outputs=outputs, id=request.id)

    async def _shadow(
        self, model: LoadedModel, variant: str, plan: tuple[str, ...], feeds: dict[str, np.ndarray], output: np.ndarray
    ) -> None:
        """Once the reply is on its way: run the teacher (unless it answered) and each planned variant on the
        same input, record their agreement, and let `auto` re-pick if a standing changed."""
        await asyncio.sleep(0)  # let the handler return and the reply be written first
        live, task = model.router.live, model.spec.task
        changed = False
        try:
            if variant == "teacher":
                teacher_out = output
            else:
                teacher_out = (await model.variant("teacher").batcher.submit(feeds))[0][0]
            for name in plan:
                out = output if name == variant else (await model.variant(name).batcher.submit(feeds))[0][0]
                changed = live.record(name, agreement_rows(task, out, teacher_out).tolist()) or changed
        finally:
            if changed:
                self._refresh(model.spec.name)

    def _refresh(self, name: str) -> None:
        """A standing changed: the model's current router (it may have been rebuilt meanwhile) re-picks."""
        current = self.registry.models.get(name)
        change = current.router.refresh() if current is not None else None
        if change is not None:
            log.warning("routing %s: auto now sends traffic to %s instead of %s (%s)", name, change.to_variant,
                        change.from_variant, change.reason)
            self.registry.metrics.routing_changes.labels(name, change.from_variant, change.to_variant).inc()

    def _tokenize(self, model: LoadedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert model.text is not None
        name = model.text.config.text_input
        if len(inputs) != 1:
            raise InvalidInput(f"model '{model.spec.name}': send either '{name}' alone or the token inputs, not both")
        texts = inputs[name]
        if texts.dtype != np.object_:
            raise InvalidInput(f"input '{name}': datatype must be BYTES (UTF-8 strings)")
        rows = texts.shape[0] if texts.ndim else 1
        if rows > self.max_batch_size:  # before tokenizing: refusing a million rows must not cost their tokenization
            raise InvalidInput(
                f"input '{name}': batch of {rows} rows is larger than the server's limit of {self.max_batch_size} "
                f"(--max-batch-size); split the request"
            )
        return model.text.encode(texts)

    @staticmethod
    def _requested_outputs(model: LoadedModel, requested: list[str]) -> list[str]:
        names = [t.name for t in model.spec.outputs]
        if not requested:
            return names
        for name in requested:
            if name not in names:
                raise InvalidInput(f"model '{model.spec.name}' has no output '{name}'; its outputs are {names}")
        return requested

    @staticmethod
    def _datatype(model: LoadedModel, name: str) -> str:
        for t in model.spec.outputs:
            if t.name == name:
                return t.datatype
        return ""

    @staticmethod
    def _record_success(variant: LoadedVariant, elapsed: float, queued: float, compute: float, feeds: Any) -> None:
        m, s = variant.metrics, variant.stats
        m.request.observe(elapsed)
        m.queue.observe(queued)
        m.compute.observe(compute)
        m.count("OK")
        rows = next(iter(feeds.values())).shape[0] if feeds else 1
        s.success_count += 1
        s.success_ns += int(elapsed * 1e9)
        s.queue_count += 1
        s.queue_ns += int(queued * 1e9)
        s.compute_count += 1
        s.compute_ns += int(compute * 1e9)
        s.inference_count += rows
        s.last_inference_ms = int(time.time() * 1000)

    @staticmethod
    def _record_failure(variant: LoadedVariant, started: float, exc: BaseException, deadline: float | None) -> None:
        if isinstance(exc, SlimserveError):
            code = exc.code.name
        elif isinstance(exc, Exception):
            code = "INTERNAL"
        else:  # asyncio.CancelledError: the caller went away, or gRPC ended the call at its deadline
            # gRPC's deadline timer may fire a little before our copy of the deadline (taken at arrival).
            expired = deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_SECONDS
            code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
        elapsed = time.perf_counter() - started
        variant.metrics.count(code)
        variant.stats.fail_count += 1
        variant.stats.fail_ns += int(elapsed * 1e9)
