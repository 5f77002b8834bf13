"""Runs on-the-fly variant jobs: a child process makes the file, then it is added atomically and loaded."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from modelrepo.files import hold_staging, release_staging, remove_stale_staging, staging_path
from server.errors import InvalidInput, NotFound, SlimserveError
from server.manifest_io import update_manifest
from server.onthefly import RECIPES
from server.registry import Registry

__all__ = ["Job", "JobManager"]

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+.-]{0,63}$")


@dataclass
class Job:
    id: str
    model: str
    variant: str
    recipe: str
    parent: str
    params: dict[str, str]
    state: str = "PENDING"  # PENDING, RUNNING, SUCCEEDED, FAILED
    step: str = "queued"
    percent: float = 0.0  # of the whole job, when the child can tell
    quality: dict[str, float] = field(default_factory=dict)  # reached so far (e.g. after an epoch)
    message: str = ""
    result: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        self.changed.set()
        self.changed = asyncio.Event()


def _progress(text: str) -> dict[str, Any]:
    """Job fields from a child's `progress: {"step": ..., "percent": ..., "quality": {...}}` line (bad ones ignored)."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    changes: dict[str, Any] = {}
    if isinstance(data.get("step"), str):
        changes["step"] = data["step"][:200]
    if isinstance(data.get("percent"), (int, float)) and not isinstance(data["percent"], bool):
        changes["percent"] = min(100.0, max(0.0, float(data["percent"])))
    if isinstance(data.get("quality"), dict):
        changes["quality"] = {str(k)[:64]: float(v) for k, v in data["quality"].items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return changes


class JobManager:
    """One job at a time (the machine's cores also serve traffic); failures leave the repository as it was.

    Staging folders of killed servers and builds are swept when the manager is made (server start)
    and before every job.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.jobs: dict[str, Job] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.sweep(frozenset())

    def live_ids(self) -> frozenset[str]:
        return frozenset(j.id for j in self.jobs.values() if j.state in ("PENDING", "RUNNING"))

    def sweep(self, live: frozenset[str]) -> None:
        """Remove staging folders whose build or job (not in `live`) is gone; never fails the caller."""
        try:
            remove_stale_staging(self.registry.repository.root, live_jobs=live)
        except OSError as exc:  # a read-only repository: nothing was left by us, and nothing to do
            log.warning("could not sweep staging folders in %s: %s", self.registry.repository.root, exc)

    def create(self, model: str, name: str, recipe: str, parent: str, params: dict[str, str]) -> Job:
        loaded = self.registry.get(model)
        parent = parent or "teacher"
        if not NAME.match(name or ""):
            raise InvalidInput(f"name {name!r}: use 1-64 letters, digits, '_', '+', '.', '-' (not starting with a symbol)")
        if name in loaded.spec.variants or (loaded.spec.folder / name).exists():
            raise InvalidInput(f"model '{model}' already has a variant or folder '{name}'; pick another name")
        if parent not in loaded.spec.variants:
            raise NotFound(f"model '{model}' has no variant '{parent}' to compress; choose from {sorted(loaded.spec.variants)}")
        if recipe not in RECIPES:
            raise InvalidInput(f"recipe {recipe!r}: on the fly the server can make {', '.join(RECIPES)} (no training)")
        if any(j.model == model and j.variant == name and j.state in ("PENDING", "RUNNING") for j in self.jobs.values()):
            raise InvalidInput(f"a job for '{model}/{name}' is already running")
        job = Job(uuid.uuid4().hex[:12], model, name, recipe, parent, dict(params))
        self.jobs[job.id] = job
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"no job '{job_id}'") from None

    async def _run(self, job: Job) -> None:
        async with self._lock:
            folder = self.registry.get(job.model).spec.folder
            staging = staging_path(folder, job.variant, job.id)
            job.update(state="RUNNING", step="starting")
            lock = None
            try:
                # Off the loop (rmtree of a large model); the live ids are read here, where jobs change.
                await asyncio.to_thread(self.sweep, self.live_ids())
                staging.mkdir()
                # Held while the job runs so a sweep by another server on this repository keeps it.
                lock = hold_staging(staging)
                entry = await self._make(job, folder, staging)
                job.update(step="adding to the repository")
                final = folder / job.variant
                if final.exists():
                    raise InvalidInput(f"'{final.name}' appeared in the model folder meanwhile; nothing was changed")
                staging.rename(final)
                try:
                    update_manifest(folder, lambda m: m["variants"].__setitem__(job.variant, entry))
                except BaseException:
                    shutil.rmtree(final, ignore_errors=True)
                    raise
                job.update(step="loading")
                await self.registry.load(job.model)
                job.update(state="SUCCEEDED", step="done", percent=100.0, result=entry, finished=time.time())
                log.info("job %s: %s/%s is servable", job.id, job.model, job.variant)
            except SlimserveError as exc:
                job.update(state="FAILED", message=exc.message, finished=time.time())
            except Exception as exc:  # anything else: report, never crash the server
                log.exception("job %s failed", job.id)
                job.update(state="FAILED", message=f"{type(exc).__name__}: {exc}", finished=time.time())
            finally:
                shutil.rmtree(staging, ignore_errors=True)
                release_staging(lock)

    async def _make(self, job: Job, folder: Any, staging: Any) -> dict[str, Any]:
        for attempt in (1, 2):
            code, result, error, spoke = await self._run_child(job, folder, staging)
            if code == 0 and result is not None:
                return result
            # A child killed by a signal before its first line (seen rarely: SIGSEGV within milliseconds of
            # the spawn, before its first line, which it prints before touching any file) did nothing yet: one fresh start is safe.
            if attempt == 1 and code < 0 and not spoke:
                log.warning("job %s: the quantization process died at start (status %s); starting it again",
                            job.id, code)
                continue
            break
        raise InvalidInput(error or f"the quantization process exited with status {code}")

    async def _run_child(self, job: Job, folder: Any, staging: Any) -> tuple[int, dict[str, Any] | None, str, bool]:
        """Run one `server.onthefly` child; its exit status, result entry, error line and whether it printed."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.onthefly", "--model-folder", str(folder), "--parent", job.parent,
            "--name", job.variant, "--recipe", job.recipe, "--params", json.dumps(job.params), "--out", str(staging),
            "--server-pid", str(os.getpid()),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        assert process.stdout is not None
        result: dict[str, Any] | None = None
        error = ""
        spoke = False
        async for raw in process.stdout:
            spoke = True
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("step: "):
                job.update(step=line[6:])
            elif line.startswith("progress: "):
                job.update(**_progress(line[10:]))
            elif line.startswith("result: "):
                result = json.loads(line[8:])
            elif line.startswith("error: "):
                error = line[7:]
        return await process.wait(), result, error, spoke
