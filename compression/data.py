"""Data sets for the build: fixed, seeded train/validation/test splits, and a calibration sample.

`--data` is a built-in name (`digits`), an `.npz` file holding `x` and optionally `y` (integer class
labels) and `labels` (class names), or `package.module:factory` returning a torch Dataset whose
items are `x` or `(x, y)` tuples. Without `y` the build measures agreement / fidelity with the teacher.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compression.errors import UsageError
from compression.factory import is_factory_ref, load_callable

__all__ = ["DATASETS", "Splits", "calibration_sample", "describe_data", "load_data",
           "register_dataset", "split_arrays"]

MIN_ROWS = 10


@dataclass(frozen=True)
class Splits:
    """A data set cut into train / validation / test; `y_*` are None when it has no labels."""

    name: str
    seed: int
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_val: np.ndarray
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    labels: list[str] | None
    stratified: bool = False

    @property
    def labelled(self) -> bool:
        return self.y_train is not None

    @property
    def classes(self) -> int | None:
        """Number of classes the labels span (None without labels)."""
        if self.y_train is None:
            return None
        top = max(int(y.max()) for y in (self.y_train, self.y_val, self.y_test) if len(y))
        return max(top + 1, len(self.labels or ()))

    def sizes(self) -> dict[str, int]:
        """Rows per split, as recorded in the manifest."""
        return {"train": len(self.x_train), "validation": len(self.x_val), "test": len(self.x_test)}


def split_arrays(name: str, x: np.ndarray, y: np.ndarray | None, seed: int,
                 labels: list[str] | None = None) -> Splits:
    """60 / 20 / 20, seeded; stratified by label when every class can be split that way."""
    from sklearn.model_selection import train_test_split

    if len(x) < MIN_ROWS:
        raise UsageError(f"data {name}: {len(x)} rows; at least {MIN_ROWS} are needed for "
                         "train / validation / test splits")
    rows = np.arange(len(x))
    stratified = y is not None
    try:
        rest, test = train_test_split(rows, test_size=0.2, random_state=seed,
                                      stratify=y if stratified else None)
        train, val = train_test_split(rest, test_size=0.25, random_state=seed,
                                      stratify=y[rest] if stratified else None)
    except ValueError:  # a class too rare to appear in every split
        stratified = False
        rest, test = train_test_split(rows, test_size=0.2, random_state=seed)
        train, val = train_test_split(rest, test_size=0.25, random_state=seed)
    pick = (lambda a, r: None if a is None else a[r])
    return Splits(name, seed, x[train], pick(y, train), x[val], pick(y, val), x[test], pick(y, test),
                  labels, stratified)


def _digits(seed: int) -> Splits:
    """scikit-learn's bundled 8x8 digits (1797 images, shipped with the package: no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are counts 0..16; x/16 puts them in [0, 1] as the ONNX input contract says.
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return split_arrays("digits", x, y, seed, labels=[str(d) for d in range(10)])


# Built-in data sets by name; `register_dataset` adds more (e.g. a text corpus).
DATASETS: dict[str, Callable[[int], Splits]] = {"digits": _digits}


def register_dataset(name: str, loader: Callable[[int], Splits]) -> None:
    """Make `--data NAME` available; `loader(seed)` returns the seeded splits."""
    DATASETS[name] = loader


def _inputs(name: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=np.float32)
    if x.dtype.kind in "iu":
        return np.ascontiguousarray(x, dtype=np.int64)
    if x.dtype.kind == "b":
        return np.ascontiguousarray(x)
    raise UsageError(f"data {name}: x has dtype {x.dtype}; expected numbers")


def _targets(name: str, y: np.ndarray, rows: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != rows:
        raise UsageError(f"data {name}: y has shape {list(y.shape)}; expected one label per row "
                         f"of x ({rows})")
    if y.dtype.kind == "f" and np.all(np.equal(np.mod(y, 1), 0)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
        raise UsageError(f"data {name}: y must hold class indices 0..C-1 (got dtype {y.dtype})")
    return y.astype(np.int64)


def _npz(path: Path, seed: int) -> Splits:
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise UsageError(f"data {path}: not a readable .npz file ({error})") from error
    if "x" not in arrays:
        raise UsageError(f"data {path}: no array named 'x' (found: {', '.join(arrays) or 'none'})")
    x = _inputs(str(path), arrays["x"])
    if x.ndim < 2:
        raise UsageError(f"data {path}: x has shape {list(x.shape)}; expected rows × features")
    y = _targets(str(path), arrays["y"], len(x)) if "y" in arrays else None
    labels = [str(v) for v in arrays["labels"].tolist()] if "labels" in arrays and y is not None else None
    return split_arrays(path.name, x, y, seed, labels)


def _dataset(ref: str, seed: int) -> Splits:
    factory = load_callable(ref, "data factory")
    try:
        dataset = factory()
        items = [dataset[i] for i in range(len(dataset))]
    except Exception as error:
        raise UsageError(f"data {ref}: the factory's Dataset failed: {type(error).__name__}: "
                         f"{error}") from error
    if not items:
        raise UsageError(f"data {ref}: the Dataset is empty")
    pairs = isinstance(items[0], tuple)  # (x, y); a list is one row of x
    if pairs and len(items[0]) != 2:
        raise UsageError(f"data {ref}: items must be x or (x, y), got tuples of {len(items[0])}")
    try:
        xs = np.stack([np.asarray(item[0] if pairs else item) for item in items])
        y = np.asarray([np.asarray(item[1]).item() for item in items]) if pairs else None
    except (ValueError, TypeError) as error:
        raise UsageError(f"data {ref}: items differ in shape or type ({error})") from error
    x = _inputs(ref, xs)
    if x.ndim < 2:
        x = x.reshape(len(x), 1)
    return split_arrays(ref, x, None if y is None else _targets(ref, y, len(x)), seed)


def load_data(spec: str, seed: int) -> Splits:
    """Load the data set named by `spec` with the split fixed by `seed`."""
    if spec in DATASETS:
        return DATASETS[spec](seed)
    if spec.endswith(".npz"):
        return _npz(Path(spec), seed)
    if is_factory_ref(spec):
        return _dataset(spec, seed)
    choices = ", ".join(sorted(DATASETS))
    raise UsageError(f"unknown data set {spec!r}; use a built-in name ({choices}), an .npz file "
                     "or package.module:factory")


def describe_data(spec: str) -> str:
    """What kind of source `spec` names, for the manifest's data record."""
    if spec in DATASETS:
        return "builtin"
    return "npz" if spec.endswith(".npz") else "factory"


def calibration_sample(splits: Splits, count: int, seed: int) -> np.ndarray:
    """`count` rows of the training split (never test), drawn without replacement, seeded."""
    rng = np.random.default_rng(seed)
    count = min(count, len(splits.x_train))
    rows = np.sort(rng.choice(len(splits.x_train), size=count, replace=False))
    return splits.x_train[rows]
