"""Input tensors for a model: from a .npy file, rows of an .npz file, or random data shaped from metadata."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.errors import DataError
from clients.model import ModelInfo, TensorInfo

__all__ = ["Dataset", "fit", "random_inputs", "npy_inputs", "load_dataset", "text_inputs"]


@dataclass(frozen=True)
class Dataset:
    """Inputs by name (all rows) and optional labels `y`, from an .npz file."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows [start, stop) of every input, as contiguous arrays."""
        return {k: np.ascontiguousarray(v[start:stop]) for k, v in self.inputs.items()}


def fit(tensor: TensorInfo, array: np.ndarray, source: str) -> np.ndarray:
    """Cast `array` to the tensor's datatype and add a batch axis if it lacks one; refuse shapes that cannot fit."""
    if tensor.datatype == "BYTES":
        if array.dtype.kind not in "OSU":
            raise DataError(f"{source}: input '{tensor.name}' is BYTES, but the data is {array.dtype}")
        flat = [x.encode() if isinstance(x, str) else bytes(x) for x in array.reshape(-1)]
        array = np.array(flat, dtype=np.object_).reshape(array.shape)
    else:
        dtype = tensor.dtype
        if array.dtype != dtype:
            if not np.can_cast(array.dtype, dtype, casting="same_kind") and not (
                array.dtype.kind in "iub" and dtype.kind == "f"
            ):
                raise DataError(f"{source}: input '{tensor.name}' is {tensor.datatype}; cannot use {array.dtype} data")
            array = array.astype(dtype)
    if tensor.batched and array.ndim == len(tensor.shape) - 1:
        array = array[np.newaxis]
    if array.ndim != len(tensor.shape) or any(w not in (-1, g) for w, g in zip(tensor.shape, array.shape)):
        raise DataError(
            f"{source}: shape {list(array.shape)} does not fit input '{tensor.name}' {list(tensor.shape)} (-1 = any)"
        )
    return np.ascontiguousarray(array)


def random_inputs(model: ModelInfo, batch: int = 1, seed: int | None = None) -> dict[str, np.ndarray]:
    """Random data for every input, dynamic axes set to `batch` (first) and 1 (others)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in model.request_inputs:
        shape = t.concrete_shape(batch)
        if t.datatype == "BYTES":
            out[t.name] = np.full(shape, b"hello world", dtype=np.object_)
        elif t.datatype == "BOOL":
            out[t.name] = rng.random(shape) < 0.5
        elif t.dtype.kind in "iu":
            out[t.name] = rng.integers(0, 100, size=shape).astype(t.dtype)
        else:
            out[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return out


def _single(model: ModelInfo, source: str) -> TensorInfo:
    if len(model.inputs) != 1:
        names = ", ".join(t.name for t in model.inputs)
        raise DataError(f"{source}: model '{model.name}' takes {len(model.inputs)} inputs ({names}); use an .npz with those keys")
    return model.inputs[0]


def npy_inputs(model: ModelInfo, path: Path) -> dict[str, np.ndarray]:
    """The array in a .npy file, for a model with one input."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    tensor = _single(model, str(path))
    return {tensor.name: fit(tensor, array, str(path))}


def text_inputs(model: ModelInfo, texts: list[str]) -> dict[str, np.ndarray]:
    """Strings for a text model's BYTES input, one per row."""
    tensor = model.text_input
    if tensor is None:
        raise DataError(f"model '{model.name}' takes no text input; its inputs are {', '.join(t.name for t in model.inputs)}")
    return {tensor.name: np.array([t.encode("utf-8") for t in texts], dtype=np.object_)}


def load_dataset(model: ModelInfo, path: Path) -> Dataset:
    """An .npz with `x` (or one array per input name) and optional labels `y`; or, for a text model,
    a .txt file with one sentence per line."""
    if path.suffix == ".txt":
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None
        if not lines:
            raise DataError(f"{path}: no sentences (one per line expected)")
        return Dataset(text_inputs(model, lines), None)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    names = [t.name for t in model.inputs]
    inputs: dict[str, np.ndarray] = {}
    if all(n in arrays for n in names):
        for t in model.inputs:
            inputs[t.name] = fit(t, arrays[t.name], str(path))
    elif "x" in arrays:
        tensor = _single(model, str(path))
        inputs[tensor.name] = fit(tensor, arrays["x"], str(path))
    else:
        raise DataError(f"{path}: no array 'x' (nor {', '.join(names)}); it holds {', '.join(arrays) or 'nothing'}")
    rows = {v.shape[0] for v in inputs.values()}
    if len(rows) != 1 or 0 in rows:
        raise DataError(f"{path}: the input arrays need the same, non-zero number of rows")
    labels = arrays.get("y")
    if labels is not None and labels.shape[0] != next(iter(rows)):
        raise DataError(f"{path}: 'y' has {labels.shape[0]} rows but the inputs have {next(iter(rows))}")
    return Dataset(inputs, labels)
