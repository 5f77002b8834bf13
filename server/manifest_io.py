"""Atomic read-modify-write of a model's manifest.json (temp file, fsync, rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["update_manifest", "write_json_atomic"]


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers see the old file or the new one, never half of either."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply `change` to the manifest in `folder` and write it back atomically; returns the new manifest."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    write_json_atomic(path, manifest)
    return manifest
