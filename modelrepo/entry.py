"""One variant's manifest entry: its file's sha256 and bytes, and the figures measured on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["variant_entry"]

from modelrepo.files import sha256_file
from modelrepo.invariance import batch_invariant


def variant_entry(folder: Path, path: Path, kind: str, parent: str | None, recipe: dict[str, Any],
                  parameters: int, macs: int | None, quality: dict[str, float], latency: dict[str, Any],
                  build_seconds: float, **extra: Any) -> dict[str, Any]:
    """The `variants.<name>` record (docs/manifest.md) of the ONNX file at `path` inside `folder`.

    `batch_invariant` is read from the graph (modelrepo.invariance) unless `extra` states it: the server
    merges rows of different requests into one run only for variants where it is true."""
    return {"kind": kind, "parent": parent, "recipe": recipe, "file": path.relative_to(folder).as_posix(),
            "sha256": sha256_file(path), "bytes": path.stat().st_size, "parameters": int(parameters),
            "macs": None if macs is None else int(macs), "quality": quality, "latency": latency,
            "build_seconds": round(build_seconds, 2), "batch_invariant": batch_invariant(path), **extra}
