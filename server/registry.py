"""The models the server has loaded: sessions, batchers and counters per variant, with their states."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

import numpy as np

from server.batcher import Batcher
from server.children import run_python
from server.errors import InvalidInput, NotFound, RepositoryError, SlimserveError, Unavailable
from server.metrics import Metrics, VariantFacts, VariantMetrics
from server.repository import ModelSpec, Repository, VariantSpec, is_model_name
from server.router import Router, parse_policy
from server.runtime import Session, prime_onnxruntime
from server.settings import Settings
from server.shadow import ShadowTracker
from server.text import TextEncoder

__all__ = ["Registry", "LoadedModel", "LoadedVariant", "VariantStats"]

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    """An unexpected error as one bounded line for logs and clients (no traceback)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


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
    text: TextEncoder | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # variant -> why it could not be loaded

    def variant(self, name: str) -> LoadedVariant:
        try:
            return self.variants[name]
        except KeyError:
            if name in self.unavailable:
                raise Unavailable(
                    f"variant '{name}' of model '{self.spec.name}' is unavailable: {self.unavailable[name]}"
                ) from None
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
        self._seen: dict[str, tuple] = {}  # model -> disk_key at its last load attempt
        self.on_change: Callable[[str, bool], Awaitable[None]] | None = None
        self.shadow = ShadowTracker()
        metrics.add_gauges(self.facts, self.shadow.values)
        prime_onnxruntime()

    def get(self, name: str) -> LoadedModel:
        model = self.models.get(name)
        if model is None:
            state, reason = self.states.get(name, ("", ""))
            if state == "LOADING":
                raise Unavailable(f"model '{name}' is loading; retry shortly")
            if state == "UNAVAILABLE":
                raise Unavailable(f"model '{name}' is not loaded: {reason}")
            raise NotFound(f"unknown model {name!r:.100}; loaded models: {sorted(self.models) or 'none'}")
        return model

    async def _notify(self, name: str, serving: bool) -> None:
        """Tell the listener (the per-model gRPC health status) that a model started or stopped serving."""
        if self.on_change is not None:
            await self.on_change(name, serving)

    def facts(self) -> list[VariantFacts]:
        """Read at scrape time by the metrics collector."""
        out = []
        for model in list(self.models.values()):
            for v in list(model.variants.values()):
                out.append(
                    VariantFacts(model.spec.name, v.spec.name, v.session.stats.memory_bytes, v.spec.bytes,
                                 v.spec.parameters, v.spec.quality, v.batcher.depth, v.batcher.running)
                )
        return out

    def _load_variant(self, model: ModelSpec, variant: VariantSpec) -> Session:
        """Blocking (runs in a thread): verify the file, then open an ONNX Runtime session."""
        if self.settings.verify_sha256:
            Repository.verify(variant, model.name)
        self.repository.check_external_data(variant)
        session = Session(variant.path, self.settings.intra_op_threads, self.settings.max_tokens_per_run,
                          batch_invariant=variant.batch_invariant, lone_threads=self.settings.lone_run_threads)
        _ = session.batch_invariant  # an older manifest without the key: read the graph here, off the event loop
        return session

    def _check_name(self, name: str) -> None:
        """Refuse names that cannot be a model folder before anything is recorded under them."""
        if not is_model_name(name):
            raise InvalidInput(
                f"model name {name!r:.100} is not a model folder name (printable, no '/', not starting with '.', "
                f"at most 255 characters); see RepositoryIndex"
            )
        if not self.repository.has_model(name) and name not in self.models:
            raise NotFound(f"no model {name!r:.100} in the repository; see RepositoryIndex")

    async def load(self, name: str) -> LoadedModel:
        """(Re)load a model. New or changed variants are loaded beside the serving ones and swapped in
        together; unchanged ones (same file and sha256) keep their session, so no request fails. A variant
        that fails (bad file, sha256) is marked unavailable with its reason and the others serve."""
        self._check_name(name)
        async with self._lock:
            old = self.models.get(name)
            if old is None:
                self.states[name] = ("LOADING", "")
            self._seen[name] = self.repository.disk_key(name)
            try:
                model, retired = await self._load_locked(name, old)
            except BaseException as exc:  # any failure, even a cancelled task, must not leave LOADING behind
                error = exc if isinstance(exc, SlimserveError) else RepositoryError(f"model {name!r}: {_first_line(exc)}")
                if old is None:
                    self.states[name] = ("UNAVAILABLE", error.message)
                else:
                    log.error("reload of %s failed, the loaded version keeps serving: %s", name, error.message)
                if isinstance(exc, Exception) and error is not exc:
                    raise error from None
                raise
            self.models[name] = model
            self.states[name] = ("READY", "")
        await asyncio.gather(*(v.batcher.close() for v in retired))
        await self._notify(name, True)
        return model

    async def _load_locked(self, name: str, old: LoadedModel | None) -> tuple[LoadedModel, list[LoadedVariant]]:
        loop = asyncio.get_running_loop()
        # In a thread: a Triton-layout folder is derived (hashed, timed) the first time, off the event loop.
        spec = await loop.run_in_executor(None, self.repository.load_spec, name)
        if spec.name != name:
            # The folder is the model's identity (as in Triton): two folders can never share a name.
            log.warning("model folder %s: manifest name %r ignored; the model is served as %r", name, spec.name, name)
            spec = dataclasses.replace(spec, name=name)
        text = None
        if spec.tokenizer is not None:
            text = TextEncoder.from_manifest(spec.folder, spec.tokenizer, [t.name for t in spec.inputs])
        reused: dict[str, LoadedVariant] = {}
        sessions: dict[str, Session] = {}
        unavailable: dict[str, str] = {}
        for vname, vspec in spec.variants.items():
            previous = old.variants.get(vname) if old else None
            if previous and previous.spec.path == vspec.path and previous.spec.sha256 == vspec.sha256:
                reused[vname] = previous
                continue
            # One variant at a time: sessions would otherwise compete for the same cores.
            started = time.perf_counter()
            try:
                sessions[vname] = await loop.run_in_executor(None, self._load_variant, spec, vspec)
            except Exception as exc:
                reason = exc.message if isinstance(exc, SlimserveError) else _first_line(exc)
                if previous is not None:
                    log.error("%s/%s: %s; the loaded version keeps serving", name, vname, reason)
                    reused[vname] = previous
                else:
                    log.error("%s/%s is unavailable: %s", name, vname, reason)
                    unavailable[vname] = reason
                continue
            log.info("loaded %s/%s in %.2fs", name, vname, time.perf_counter() - started)
        if not sessions and not reused:
            raise RepositoryError(f"model {name!r}: no variant could be loaded: " + "; ".join(unavailable.values()))
        try:
            policy = parse_policy(spec.routing, spec)
        except SlimserveError as exc:
            log.error("model %s: manifest routing refused (%s); routing to %r", name, exc.message, spec.default_variant)
            policy = parse_policy({"policy": "fixed"}, spec)
        router = Router(spec, policy, unavailable=unavailable, live=self.shadow.model(name))
        await self._measure_memory(sessions)
        variants: dict[str, LoadedVariant] = {}
        for vname, vspec in spec.variants.items():
            if vname in reused:
                if reused[vname].spec.sha256 == vspec.sha256:
                    reused[vname].spec = vspec
                variants[vname] = reused[vname]
            elif vname in sessions:
                variants[vname] = self._start_variant(spec, vspec, sessions[vname])
        self.metrics.set_unavailable(name, unavailable)
        retired = [v for vname, v in (old.variants.items() if old else ()) if variants.get(vname) is not v]
        return LoadedModel(spec, variants, router, text, unavailable), retired

    async def _measure_memory(self, sessions: dict[str, Session]) -> None:
        """Replace in-process RSS deltas with figures measured in a fresh process (server.memprobe)."""
        if not sessions:
            return
        files = [str(s.path) for s in sessions.values()]
        figures: dict[str, int] | None = None
        for attempt in (1, 2):  # a probe process can die for reasons of its own (a signal): try once more
            status, err = None, b""
            try:
                done = await run_python(["server.memprobe", *files, "--threads", str(self.settings.intra_op_threads),
                                         "--lone-threads", str(self.settings.lone_run_threads)],
                                        timeout=300)
                status, err = done.returncode, done.stderr
                figures = json.loads(done.stdout.decode().strip().splitlines()[-1])
                break
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
                tail = err.decode(errors="replace").strip().splitlines()[-1:]
                log.log(logging.INFO if attempt == 1 else logging.WARNING,
                        "memory probe failed (%s; exit status %s%s)%s", exc, status,
                        f": {tail[0][:200]}" if tail else "",
                        ", retrying" if attempt == 1 else "; keeping in-process estimates")
        if figures is None:
            return
        for session in sessions.values():
            if str(session.path) in figures:
                session.stats = dataclasses.replace(session.stats, memory_bytes=int(figures[str(session.path)]))

    @staticmethod
    def signature(variants: Iterable[VariantSpec]) -> tuple:
        """What decides whether a model must be reloaded: its variant files and their sha256."""
        return tuple(sorted((v.name, str(v.path), v.sha256) for v in variants))

    async def poll(self) -> None:
        """One pass of the repository poll: load new or changed models, unload removed ones.

        A model whose folder is unchanged since the last attempt (same files, sizes and times) is skipped,
        so a broken model is reported once, not on every pass, and is retried as soon as it is fixed."""
        try:
            names = set(self.repository.model_names())
        except SlimserveError as exc:
            log.error("repository poll: %s", exc.message)
            return
        for name in sorted(names):
            try:
                key = self.repository.disk_key(name)
                if key == self._seen.get(name) or self.states.get(name) == ("UNAVAILABLE", "unloaded"):
                    continue
                model = self.models.get(name)
                if model is not None:
                    # Unavailable variants (or kept older versions) are missing here, so a fix reloads. A new
                    # routing (SetRouting on another server sharing the repository) reloads too, reusing every session.
                    on_disk = await asyncio.get_running_loop().run_in_executor(None, self.repository.load_spec, name)
                    if (self.signature(on_disk.variants.values()) == self.signature(v.spec for v in model.variants.values())
                            and on_disk.routing == model.spec.routing):
                        self._seen[name] = key
                        continue
                log.info("repository poll: %s is new or changed on disk, loading", name)
                await self.load(name)
            except SlimserveError as exc:
                log.error("repository poll: %s: %s", name, exc.message)
            except Exception as exc:  # the poll must outlive any one model
                log.error("repository poll: %s: %s", name, _first_line(exc))
        for name in set(self.models) - names:
            log.info("repository poll: %s was removed from disk, unloading", name)
            await self.unload(name)
        for name in set(self.states) - names - set(self.models):
            self.states.pop(name, None)  # a folder that failed to load and is gone: forget it
            self._seen.pop(name, None)

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
        # Text encoders mask padding out (attention mask + masked mean pooling), so requests of different
        # lengths may share a run once padded; the manifest opts in with tokenizer.pad_merge.
        pad_values: dict[str, int] = {}
        if spec.tokenizer and spec.tokenizer.get("pad_merge", True):
            # Token ids pad with the tokenizer's pad id (RoBERTa: 1), masks and segments with 0.
            pad_id = int(spec.tokenizer.get("pad_id") or 0)
            pad_values = {t.name: pad_id if t.name == "input_ids" else 0 for t in spec.inputs
                          if t.name in ("input_ids", "attention_mask", "token_type_ids") and len(t.shape) == 2}
        batcher = Batcher(
            run,
            self.executor,
            concurrency=self.settings.workers,
            max_batch_size=self.settings.max_batch_size,
            max_queue_size=self.settings.max_queue_size,
            max_queue_delay_us=self.settings.max_queue_delay_us,
            batching=batchable and self.settings.batching,
            on_batch=on_batch,
            pad_values=pad_values,
            inline_below_us=self.settings.inline_compute_us,
            # Rows of different requests share a run only where that cannot change anyone's answer.
            merge_requests=session.batch_invariant,
            batch_first=session.batch_first,
            on_idle=session.settle,
            idle_seconds=self.settings.idle_settle_seconds,
        )
        batcher.start()
        return LoadedVariant(vspec, session, batcher, metrics, stats)

    async def unload(self, name: str) -> None:
        async with self._lock:
            model = self.models.pop(name, None)
            if model is None and name not in self.states:
                raise NotFound(f"unknown model {name!r:.100}")
            self.states[name] = ("UNAVAILABLE", "unloaded")
            self.metrics.set_unavailable(name, {})
        await self._notify(name, False)
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
