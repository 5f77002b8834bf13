"""The held-out and calibration files of a model folder: `.npz` archives of named input arrays plus `y`."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modelrepo import ManifestError
from modelrepo.measure import Feeds

__all__ = ["LABELS", "read_feeds", "write_feeds"]

LABELS = "y"


def write_feeds(path: Path, feeds: Feeds, labels: np.ndarray | None = None) -> None:
    """One array per model input, by the input's name, plus `y` (labels) when given."""
    if LABELS in feeds:
        raise ValueError(f"an input may not be named {LABELS!r}: the name holds the labels")
    np.savez(path, **dict(feeds), **({LABELS: labels} if labels is not None else {}))


def read_feeds(path: Path, input_names: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(inputs by name, labels or None) from `path`. A single-input model's archive may call its
    array `x` (files written before inputs were named)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise ManifestError(f"{path.name} is missing from the model folder") from None
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ManifestError(f"{path}: not a readable .npz file ({exc})") from None
    if len(input_names) == 1 and input_names[0] not in arrays and "x" in arrays:
        arrays[input_names[0]] = arrays.pop("x")
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise ManifestError(f"{path.name} has no arrays for inputs {missing} (found: {', '.join(arrays)})")
    return {n: arrays[n] for n in input_names}, arrays.get(LABELS)
