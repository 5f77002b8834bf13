"""The repository format's manifest update, with its errors as the server's RepositoryError (FAILED_PRECONDITION)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelrepo import ManifestError, files
from server.errors import RepositoryError

__all__ = ["update_manifest"]


def update_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """`modelrepo.files.update_manifest`: validated, atomic; a manifest it cannot write is a RepositoryError."""
    try:
        return files.update_manifest(folder, change)
    except ManifestError as exc:
        raise RepositoryError(str(exc)) from None
