"""Files of a repository: sha256, atomic JSON writes (manifests validated first), staged folders, confinement."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelrepo import ManifestError
from modelrepo.schema import validate

try:
    import fcntl
except ImportError:  # not POSIX: staging folders go unlocked and owners are judged by name alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["MANIFEST", "confined", "hold_staging", "read_manifest", "release_staging", "remove_stale_staging",
           "sha256_file", "staged_model_dir", "staging_path", "update_manifest", "write_json_atomic",
           "write_manifest"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Staging folders: the build's `<root>/.<name>.partial-<pid>`, a server job's
# `<root>/<model>/.<variant>.partial-<12 hex job id>`. Nothing else is ever swept.
BUILD_STAGING = re.compile(r"^\.(?P<name>.+)\.partial-(?P<owner>[0-9]{1,10})$")
JOB_STAGING = re.compile(r"^\.(?P<name>.+)\.partial-(?P<owner>[0-9a-f]{12})$")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large models do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def confined(base: Path, relative: str, what: str) -> Path:
    """Resolve `relative` under `base`, refusing `..`, absolute paths and symlinks that escape."""
    if "\x00" in relative:
        raise ManifestError(f"{what}: path {relative!r:.60} holds a NUL byte")
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base.resolve()):
        raise ManifestError(f"{what}: path {relative!r:.60} leaves the model folder; refusing to load it")
    return candidate


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync it, then `os.replace` it into place,
    so a reader sees the old file or the whole new one, never a torn write."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; the server may run as another user and must read it.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Validate `manifest` against the schema, then write `folder/manifest.json` atomically."""
    problems = validate(manifest)
    if problems:
        raise ManifestError(f"manifest does not match schema: {'; '.join(problems)}")
    path = folder / MANIFEST
    write_json_atomic(path, manifest)
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    """`folder/manifest.json` as a dict; ManifestError when it is unreadable or not an object."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def update_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply `change` to the manifest in `folder`, validate, and write it back atomically."""
    manifest = read_manifest(folder)
    change(manifest)
    write_manifest(folder, manifest)
    return manifest


def _fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_model_dir(root: Path, name: str) -> Iterator[Path]:
    """Yield an empty staging folder `<root>/.<name>.partial-<pid>`; on a clean exit swap it in
    as `<root>/<name>`, on any exception (Ctrl-C included) delete it and leave `<root>` as it was
    (removed again if this call created it).

    Staging beside the target keeps both on one file system, so the swap is two renames: the old
    folder goes aside, the new one comes in, the old one is deleted. A reader never sees a folder
    mixing two builds; between the two renames the model is briefly absent rather than torn.
    """
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    staging = staging_path(root, name, os.getpid())
    aside = root / f".{name}.old-{os.getpid()}"
    # Leftovers of killed builds of this model (pid gone), and one of an earlier run with our pid.
    remove_stale_staging(root, models=False, only_name=name)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    lock = hold_staging(staging)
    try:
        yield staging
        _fsync_dir(staging)
        if target.exists():
            os.rename(target, aside)
        try:
            os.rename(staging, target)
        except BaseException:
            if aside.exists() and not target.exists():
                os.rename(aside, target)  # put the previous build back
            raise
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()  # a repository root this build made, if still empty
        raise
    finally:
        release_staging(lock)
    shutil.rmtree(aside, ignore_errors=True)


def staging_path(parent: Path, name: str, owner: int | str) -> Path:
    """`<parent>/.<name>.partial-<owner>`: a process id (builds) or a job id (server jobs)."""
    return parent / f".{name}.partial-{owner}"


def hold_staging(folder: Path) -> int | None:
    """Lock `folder` as owned by this process until `release_staging` (or until it dies).

    The kernel drops the lock with its holder, so a sweep on another host or in another PID
    namespace (a replica, a build pod sharing the volume) still sees the folder is in use, where a
    pid or job id alone cannot tell. None where the file system has no flock (then names decide).
    """
    try:
        return _try_lock(folder)
    except OSError:
        return None


def _try_lock(folder: Path) -> int | None:
    """An open fd of `folder` holding its exclusive lock, or None where there is no flock (fcntl or file
    system); raises BlockingIOError while another process holds it, OSError when it cannot be opened."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:
        os.close(fd)
        return None
    return fd


def release_staging(lock: int | None) -> None:
    """Give up the lock `hold_staging` returned (the folder itself is left as it is)."""
    if lock is not None:
        with contextlib.suppress(OSError):
            os.close(lock)


def _pid_alive(pid: int) -> bool:
    """True while `pid` names a process here (another user's too, and this one: in containers the
    build and the server may both be pid 1 in their own namespaces, so our pid proves nothing)."""
    if pid <= 0:
        return False  # never a builder; os.kill(0, ...) would address our own process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep the folder
    return True


def _remove_if_unheld(folder: Path, owner: str) -> bool:
    """Remove the staging `folder` unless a live process holds its lock; true when removed."""
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False  # a symlink (or a file) with a staging name: never followed, never removed
    try:
        fd = _try_lock(folder)  # None without flock: the owner test by name decided alone
    except OSError:  # BlockingIOError: its owner is alive somewhere; else it cannot be opened
        return False
    try:
        shutil.rmtree(folder)  # refuses a symlink at the top, unlinks (never follows) those inside
    except OSError as exc:
        log.warning("could not remove stale staging folder %s: %s", folder, exc)
        return False
    finally:
        if fd is not None:
            os.close(fd)
    log.info("removed stale staging folder %s (its owner %s is gone)", folder, owner)
    return True


def _children(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


def remove_stale_staging(root: Path, live_jobs: Collection[str] = (), models: bool = True,
                         only_name: str | None = None) -> list[Path]:
    """Remove the staging folders under the repository `root` whose owner is gone; return them.

    At `root`, a build's `.<name>.partial-<pid>` goes when no process has that pid; in each model
    folder `<root>/<model>` (one holding a manifest; with `models`), a job's
    `.<variant>.partial-<job id>` goes when the id is not in `live_jobs` (the running jobs of the
    calling server). Either way a folder whose lock a live process holds (`hold_staging`) stays.
    `only_name` limits the sweep to one model's build folders. Only real folders with those exact
    names are removed; symlinks are never followed out of `root` (a model folder linked inside
    `root` is swept, one linked elsewhere is not). Each removal is logged.
    """
    base = Path(root).resolve()
    removed: list[Path] = []
    for entry in _children(base):
        match = BUILD_STAGING.match(entry.name)
        if match and (only_name is None or match["name"] == only_name) and not _pid_alive(int(match["owner"])):
            if _remove_if_unheld(Path(entry.path), f"pid {match['owner']}"):
                removed.append(Path(entry.path))
    if not models:
        return removed
    seen: set[Path] = set()
    for entry in _children(base):
        if entry.name.startswith("."):
            continue
        try:
            folder = Path(entry.path).resolve()
        except (OSError, RuntimeError):  # a symlink loop: not a model folder
            continue
        if folder in seen or not folder.is_relative_to(base) or not (folder / MANIFEST).is_file():
            continue  # not a model folder of this repository
        seen.add(folder)
        for child in _children(folder):
            match = JOB_STAGING.match(child.name)
            if match and match["owner"] not in live_jobs:
                if _remove_if_unheld(Path(child.path), f"job {match['owner']}"):
                    removed.append(Path(child.path))
    return removed
