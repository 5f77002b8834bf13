"""The models the server has loaded: sessions, batchers and counters per variant, with their states."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from server.batcher import Batcher
from server.errors import NotFound, SlimserveError, Unavailable
from server.metrics import Metrics, VariantFacts, VariantMetrics
from server.repository import ModelSpec, Repository, VariantSpec
from server.router import Router, parse_policy
from server.runtime import Session
from server.settings import Settings

__all__ = ["Registry", "LoadedModel", "LoadedVariant", "VariantStats"]

log = logging.getLogger(__name__)


@dataclass
class VariantStats:
    """Cumulative counts and nanoseconds for Triton's ModelStatistics."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_count: int = 0
    compute_ns: int = 0
    inference_count: int = 0  # rows served
    execution_count: int = 0  # ONNX Runtime runs (fewer than requests when batching merges)
    last_inference_ms: int = 0
    batches: dict[int, list[int]] = field(default_factory=dict)  # rows -> [count, compute ns]

    def record_batch(self, rows: int, compute_seconds: float) -> None:
        self.execution_count += 1
        entry = self.batches.setdefault(rows, [0, 0])
        entry[0] += 1
        entry[1] += int(compute_seconds * 1e9)


@dataclass
class LoadedVariant:
    spec: VariantSpec
    session: Session
    batcher: Batcher
    metrics: VariantMetrics
    stats: VariantStats


@dataclass
class LoadedModel:
    spec: ModelSpec
    variants: dict[str, LoadedVariant]
    router: Router

    def variant(self, name: str) -> LoadedVariant:
        try:
            return self.variants[name]
        except KeyError:
            raise NotFound(
                f"model '{self.spec.name}' has no variant '{name}'; choose from {sorted(self.variants)}"
            ) from None


class Registry:
    """Loads, holds and unloads models; lookups on the request path are plain dict reads."""

    def __init__(self, settings: Settings, repository: Repository, metrics: Metrics, executor: Executor) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.executor = executor
        self.models: dict[str, LoadedModel] = {}
        self.states: dict[str, tuple[str, str]] = {}  # model -> (state, reason) for RepositoryIndex
        self._lock = asyncio.Lock()
        metrics.add_gauges(self.facts)

    def get(self, name: str) -> LoadedModel:
        model = self.models.get(name)
        if model is None:
            state, reason = self.states.get(name, ("", ""))
            if state == "UNAVAILABLE":
                raise Unavailable(f"model '{name}' is not loaded: {reason}")
            raise NotFound(f"unknown model '{name}'; loaded models: {sorted(self.models) or 'none'}")
        return model

    def facts(self) -> list[VariantFacts]:
        """Read at scrape time by the metrics collector."""
        out = []
        for model in list(self.models.values()):
            for v in list(model.variants.values()):
                out.append(
                    VariantFacts(model.spec.name, v.spec.name, v.session.stats.memory_bytes, v.spec.bytes,
                                 v.spec.parameters, v.spec.quality)
                )
        return out

    def _load_variant(self, model: ModelSpec, variant: VariantSpec) -> Session:
        """Blocking (runs in a thread): verify the file, then open an ONNX Runtime session."""
        self.repository.check_external_data(variant)
        if self.settings.verify_sha256:
            Repository.verify(variant, model.name)
        return Session(variant.path, self.settings.intra_op_threads)

    async def load(self, name: str) -> LoadedModel:
        """(Re)load a model; the old version keeps serving until the new one is ready, then is swapped out."""
        async with self._lock:
            self.states[name] = ("LOADING", "")
            loop = asyncio.get_running_loop()
            try:
                spec = self.repository.load_spec(name)
                router = Router(spec, parse_policy(spec.routing, spec))
                # Load one variant at a time: sessions would otherwise compete for the same cores.
                sessions = {}
                for vname, vspec in spec.variants.items():
                    started = time.perf_counter()
                    sessions[vname] = await loop.run_in_executor(None, self._load_variant, spec, vspec)
                    log.info("loaded %s/%s in %.2fs (%d bytes resident)", name, vname,
                             time.perf_counter() - started, sessions[vname].stats.memory_bytes)
            except SlimserveError as exc:
                self.states[name] = ("UNAVAILABLE", exc.message)
                raise
            variants = {vname: self._start_variant(spec, vspec, sessions[vname]) for vname, vspec in spec.variants.items()}
            old = self.models.get(name)
            self.models[name] = LoadedModel(spec, variants, router)
            self.states[name] = ("READY", "")
        if old is not None:
            await asyncio.gather(*(v.batcher.close() for v in old.variants.values()))
        return self.models[name]

    def _start_variant(self, spec: ModelSpec, vspec: VariantSpec, session: Session) -> LoadedVariant:
        metrics = self.metrics.variant(spec.name, vspec.name)
        stats = VariantStats()
        lock = threading.Lock()

        def on_batch(rows: int, compute_seconds: float) -> None:
            metrics.batch.observe(rows)
            with lock:
                stats.record_batch(rows, compute_seconds)

        output_names = session.output_names

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return session.run(feeds, output_names)

        batchable = all(t.shape and t.shape[0] == -1 for t in spec.inputs)
        batcher = Batcher(
            run,
            self.executor,
            runners=self.settings.workers,
            max_batch_size=self.settings.max_batch_size,
            max_queue_size=self.settings.max_queue_size,
            max_queue_delay_us=self.settings.max_queue_delay_us,
            batching=batchable and self.settings.batching,
            on_batch=on_batch,
        )
        batcher.start()
        return LoadedVariant(vspec, session, batcher, metrics, stats)

    async def unload(self, name: str) -> None:
        async with self._lock:
            model = self.models.pop(name, None)
            if model is None and name not in self.states:
                raise NotFound(f"unknown model '{name}'")
            self.states[name] = ("UNAVAILABLE", "unloaded")
        if model is not None:
            await asyncio.gather(*(v.batcher.close() for v in model.variants.values()))

    async def load_all(self) -> None:
        """Load every model in the repository; one broken model does not stop the others."""
        for name in self.repository.model_names():
            try:
                await self.load(name)
            except SlimserveError as exc:
                log.error("model %s not loaded: %s", name, exc.message)

    async def close(self) -> None:
        for name in list(self.models):
            model = self.models.pop(name)
            await asyncio.gather(*(v.batcher.close() for v in model.variants.values()))
