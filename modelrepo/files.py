"""Files of a repository: sha256, atomic JSON writes (manifests validated first), staged folders, confinement."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelrepo import ManifestError
from modelrepo.schema import validate

__all__ = ["MANIFEST", "confined", "read_manifest", "sha256_file", "staged_model_dir", "update_manifest",
           "write_json_atomic", "write_manifest"]

MANIFEST = "manifest.json"


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
    staging = root / f".{name}.partial-{os.getpid()}"
    aside = root / f".{name}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of an earlier run with our pid
    staging.mkdir()
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
    shutil.rmtree(aside, ignore_errors=True)
