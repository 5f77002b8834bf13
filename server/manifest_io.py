"""The repository format's manifest update, with its errors as the server's RepositoryError (FAILED_PRECONDITION)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelrepo import ManifestError, files
from server.errors import RepositoryError

try:
    import fcntl
except ImportError:  # not on POSIX: no lock, as before
    fcntl = None  # type: ignore[assignment]

__all__ = ["update_manifest"]


def update_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """`modelrepo.files.update_manifest`: validated, atomic; a manifest it cannot write is a RepositoryError.

    Servers sharing the repository take turns (an flock on `.manifest.lock` in the model folder, held for the
    read-change-write), so one's new variant or routing is never overwritten by another's update."""
    lock = None
    if fcntl is not None:
        try:
            lock = os.open(folder / ".manifest.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # a read-only folder or no flock: update unlocked (the write reports what is wrong)
            if lock is not None:
                os.close(lock)
            lock = None
    try:
        return files.update_manifest(folder, change)
    except ManifestError as exc:
        raise RepositoryError(str(exc)) from None
    finally:
        if lock is not None:
            os.close(lock)
