"""Runs on-the-fly variant jobs: a child process (or a Kubernetes Job) makes the file, then it is added atomically and loaded."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrepo.files import hold_staging, release_staging, remove_stale_staging, staging_path
from modelrepo.onthefly import RECIPES, parse_recipe
from server.children import run_python_lines
from server.errors import FailedPrecondition, InvalidInput, NotFound, SlimserveError
from server.manifest_io import update_manifest
from server.registry import Registry

__all__ = ["Job", "JobManager"]

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+.-]{0,63}$")
RUNNERS = ("", "local", "kubernetes")
EXTRA = "pip install -e '.[compression]'"
# What `python -m compression.onthefly` imports to train and export (the `compression` extra). Looked up
# with find_spec, never imported: the server stays torch-free.
EXTRA_MODULES = ("torch", "torch_pruning", "onnxscript")


@dataclass
class Job:
    id: str
    model: str
    variant: str
    recipe: str
    parent: str
    params: dict[str, str]
    data: str = ""  # resolved path of the training data, or "" for the model folder's own files
    runner: str = ""
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


@dataclass
class _Output:
    """What a job's child said on stdout; `line` is the one parser both runners feed."""

    job: Job
    result: dict[str, Any] | None = None
    error: str = ""
    spoke: bool = False

    def line(self, text: str) -> None:
        self.spoke = True
        line = text.rstrip()
        if line.startswith("step: "):
            self.job.update(step=line[6:][:200])
        elif line.startswith("progress: "):
            self.job.update(**_progress(line[10:]))
        elif line.startswith("result: "):
            try:
                self.result = json.loads(line[8:])
            except ValueError:
                self.error = "the job's process printed a result that is not JSON"
        elif line.startswith("error: "):
            self.error = line[7:]


def _missing_module(names: tuple[str, ...]) -> str | None:
    """The first of `names` this environment cannot import (found without importing it), else None."""
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a broken or hidden package looks absent
            return name
    return None


def _compression_child_missing() -> str | None:
    """What keeps `python -m compression.onthefly` from running here (the serving image ships only
    compression/__init__.py), else None; `compression` itself is located, not imported."""
    try:
        spec = importlib.util.find_spec("compression")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not any((Path(folder) / "onthefly.py").is_file() for folder in locations):
        return "compression.onthefly"
    return _missing_module(EXTRA_MODULES)


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

    def create(self, model: str, name: str, recipe: str, parent: str, params: dict[str, str], data: str = "",
               runner: str = "") -> Job:
        loaded = self.registry.get(model)
        # A Triton-layout model has numbered versions and no "teacher": its default (latest) version is the parent.
        parent = parent or ("teacher" if "teacher" in loaded.spec.variants else loaded.spec.default_variant)
        if not NAME.match(name or ""):
            raise InvalidInput(f"name {name!r}: use 1-64 letters, digits, '_', '+', '.', '-' (not starting with a symbol)")
        if name in loaded.spec.variants or (loaded.spec.folder / name).exists():
            raise InvalidInput(f"model '{model}' already has a variant or folder '{name}'; pick another name")
        if parent not in loaded.spec.variants:
            raise NotFound(f"model '{model}' has no variant '{parent}' to compress; choose from {sorted(loaded.spec.variants)}")
        try:
            steps = parse_recipe(recipe, params)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        parent_kind = loaded.spec.variants[parent].kind
        if "int8" in parent_kind:  # ORT's quantizer fails on quantized graphs with a bare KeyError; say why up front
            raise InvalidInput(f"parent {parent!r} is already int8 (kind {parent_kind!r}); compress a float variant "
                               f"such as {loaded.spec.default_variant!r} instead")
        if runner not in RUNNERS:
            raise InvalidInput(f"runner {runner!r}: use local (a child process, the default) or kubernetes")
        data = self._data_path(data)
        if not (loaded.spec.manifest.get("data") or {}).get("heldout_file"):
            raise FailedPrecondition(
                f"model '{model}' has no held-out data to measure a new variant on (a model folder served without "
                "a build, e.g. a Triton-layout one): build it with `python -m compression.build --teacher FILE.onnx`, "
                "or add heldout.npz and calibration.npz with a \"data\" entry in its manifest")
        if self._child_module(steps, data) == "compression.onthefly" and runner != "kubernetes":
            missing = _compression_child_missing()
            if missing:
                raise FailedPrecondition(
                    f"recipe {recipe!r} needs the compression extra, which this server's environment lacks (no "
                    f"module {missing!r}): install it where the server runs ({EXTRA}), or use runner=kubernetes; "
                    f"{' and '.join(RECIPES)} need nothing more")
        if runner == "kubernetes" and _missing_module(("server.kubejob",)):
            raise FailedPrecondition("runner 'kubernetes': this server has no server.kubejob module; use runner=local")
        if any(j.model == model and j.variant == name and j.state in ("PENDING", "RUNNING") for j in self.jobs.values()):
            raise InvalidInput(f"a job for '{model}/{name}' is already running")
        job = Job(uuid.uuid4().hex[:12], model, name, recipe, parent, dict(params), data, runner)
        self.jobs[job.id] = job
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def _data_path(self, data: str) -> str:
        """`data` resolved inside the operator's --job-data-dir, or "" (the model folder's own files)."""
        if not data:
            return ""
        root = getattr(self.registry.settings, "job_data_dir", None)
        if root is None:
            raise InvalidInput("data: this server reads job data only under --job-data-dir (SLIMSERVE_JOB_DATA_DIR), "
                               "which is not set; leave data empty to use the model folder's own files")
        base = Path(root).resolve()
        path = (base / data).resolve()  # an absolute `data` stays absolute; symlinks are followed, then checked
        if not path.is_relative_to(base):
            raise InvalidInput(f"data {data!r:.200}: outside --job-data-dir (SLIMSERVE_JOB_DATA_DIR); put the file "
                               "there and give its path relative to it")
        if path.suffix != ".npz" or not path.is_file():
            raise InvalidInput(f"data {data!r:.200}: not an .npz file under --job-data-dir (SLIMSERVE_JOB_DATA_DIR)")
        return str(path)

    @staticmethod
    def _child_module(steps: list[str], data: str) -> str:
        """A lone int8 step on the folder's own files is made torch-free; anything else by the compression pipeline."""
        return "server.onthefly" if len(steps) == 1 and steps[0] in RECIPES and not data else "compression.onthefly"

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

    async def _make(self, job: Job, folder: Path, staging: Path) -> dict[str, Any]:
        module = self._child_module(job.recipe.split("+"), job.data)
        args = [module, "--model-folder", str(folder), "--parent", job.parent, "--name", job.variant,
                "--recipe", job.recipe, "--params", json.dumps(job.params), "--out", str(staging),
                "--server-pid", str(os.getpid()), *(["--data", job.data] if job.data else [])]
        for attempt in (1, 2):
            output = _Output(job)
            if job.runner == "kubernetes":
                code = await self._run_kubernetes(args, staging, output.line)
            else:
                code = await self._run_child(args, output.line)
            if code == 0 and output.result is not None:
                return output.result
            # A child killed by a signal before its first line (seen rarely: SIGSEGV within milliseconds of the
            # spawn) did nothing yet, as it prints that line before touching any file: one fresh start is safe.
            if attempt == 1 and code < 0 and not output.spoke:
                log.warning("job %s: the job's process died at start (status %s); starting it again", job.id, code)
                continue
            break
        raise InvalidInput(output.error or f"the job's process ({module}) exited with status {code}")

    async def _run_kubernetes(self, args: list[str], staging: Path, on_line: Callable[[str], None]) -> int:
        try:
            kubejob = importlib.import_module("server.kubejob")  # only servers that use the runner load it
        except ImportError as exc:
            raise FailedPrecondition(f"runner 'kubernetes': server.kubejob cannot be loaded ({exc}); "
                                     "use runner=local") from None
        return await kubejob.run(args, staging, on_line, self.registry.settings)

    async def _run_child(self, args: list[str], on_line: Callable[[str], None]) -> int:
        """Run `python -m <args>` here; every stdout line to `on_line`; its exit status (negative: a signal)."""
        return await run_python_lines(args, on_line)
