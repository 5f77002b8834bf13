"""Data sets for the build: fixed, seeded train/validation/test splits, and a calibration sample.

`--data` is a built-in name (`digits`), an `.npz` file, or `package.module:factory` returning a
torch Dataset whose items are `x` or `(x, y)` tuples (`x` a tensor, or a dict of named tensors).
An `.npz` holds one array per teacher input, named after the input (`x1`, `x2`; a single-input
teacher takes any one name, e.g. `x`), plus optionally `y` (integer class labels) and `labels`
(class names). Without `y` the build measures agreement / fidelity with the teacher.

Inputs are kept as named arrays (`Feeds`, rows along axis 0) from here to the manifest, so a
teacher with several inputs trains, prunes, quantizes and serves like a single-input one.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from compression.errors import UsageError
from compression.factory import is_factory_ref, load_callable
from modelrepo.measure import count, take

__all__ = ["DATASETS", "RESERVED", "Splits", "bind_inputs", "calibration_sample", "describe_data",
           "load_data", "register_dataset", "split_arrays"]

# Array names an .npz reserves for labels; every other array is a model input.
RESERVED = ("y", "labels")

MIN_ROWS = 10


@dataclass(frozen=True)
class Splits:
    """A data set cut into train / validation / test; `y_*` are None when it has no labels."""

    name: str
    seed: int
    x_train: dict[str, np.ndarray]
    y_train: np.ndarray | None
    x_val: dict[str, np.ndarray]
    y_val: np.ndarray | None
    x_test: dict[str, np.ndarray]
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
        return {"train": count(self.x_train), "validation": count(self.x_val), "test": count(self.x_test)}

    @property
    def input_names(self) -> list[str]:
        return list(self.x_train)


def split_arrays(name: str, x: dict[str, np.ndarray], y: np.ndarray | None, seed: int,
                 labels: list[str] | None = None) -> Splits:
    """60 / 20 / 20, seeded; stratified by label when every class can be split that way."""
    from sklearn.model_selection import train_test_split

    total = count(x)
    if total < MIN_ROWS:
        raise UsageError(f"data {name}: {total} rows; at least {MIN_ROWS} are needed for "
                         "train / validation / test splits")
    rows = np.arange(total)
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
    def pick(a: np.ndarray | None, r: np.ndarray) -> np.ndarray | None:
        return None if a is None else a[r]

    return Splits(name, seed, take(x, train), pick(y, train), take(x, val), pick(y, val), take(x, test),
                  pick(y, test), labels, stratified)


def bind_inputs(splits: Splits, names: list[str], teacher: str) -> Splits:
    """The splits with their arrays named and ordered as the teacher's inputs: matched by name, or
    (one input, one array) renamed. A clear error when the two do not line up."""
    have = splits.input_names
    if have == names:
        return splits
    if len(names) == 1 and len(have) == 1:
        mapping = {names[0]: have[0]}
    elif set(names) <= set(have) and len(names) == len(have):
        mapping = {n: n for n in names}
    else:
        raise UsageError(f"data {splits.name} has arrays {', '.join(have)}; teacher {teacher} takes "
                         f"inputs {', '.join(names)}: name one array after each input")

    def bind(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: x[source] for n, source in mapping.items()}
    return replace(splits, x_train=bind(splits.x_train), x_val=bind(splits.x_val),
                   x_test=bind(splits.x_test))


def _digits(seed: int) -> Splits:
    """scikit-learn's bundled 8x8 digits (1797 images, shipped with the package: no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are counts 0..16; x/16 puts them in [0, 1] as the ONNX input contract says.
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return split_arrays("digits", {"x": x}, y, seed, labels=[str(d) for d in range(10)])


# Built-in data sets by name; `register_dataset` adds more (e.g. a text corpus).
DATASETS: dict[str, Callable[[int], Splits]] = {"digits": _digits}


def register_dataset(name: str, loader: Callable[[int], Splits]) -> None:
    """Make `--data NAME` available; `loader(seed)` returns the seeded splits."""
    DATASETS[name] = loader


def _inputs(name: str, key: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "f":
        x = np.ascontiguousarray(x, dtype=np.float32)
    elif x.dtype.kind in "iu":
        x = np.ascontiguousarray(x, dtype=np.int64)
    elif x.dtype.kind == "b":
        x = np.ascontiguousarray(x)
    else:
        raise UsageError(f"data {name}: {key} has dtype {x.dtype}; expected numbers")
    if x.ndim < 2:
        raise UsageError(f"data {name}: {key} has shape {list(x.shape)}; expected rows × features")
    return x


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
    names = [k for k in arrays if k not in RESERVED]
    if not names:
        raise UsageError(f"data {path}: no input arrays (found: {', '.join(arrays) or 'none'}); "
                         "name one array after each teacher input, e.g. x, or x1 and x2")
    x = {k: _inputs(str(path), k, arrays[k]) for k in names}
    rows = {k: len(v) for k, v in x.items()}
    if len(set(rows.values())) > 1:
        raise UsageError(f"data {path}: input arrays differ in rows ({rows}); every input needs one "
                         "row per sample")
    y = _targets(str(path), arrays["y"], count(x)) if "y" in arrays else None
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
    xs = [item[0] if pairs else item for item in items]
    named = isinstance(xs[0], dict)  # several named inputs per item
    try:
        stacked = ({k: np.stack([np.asarray(row[k]) for row in xs]) for k in xs[0]} if named
                   else {"x": np.stack([np.asarray(row) for row in xs])})
        y = np.asarray([np.asarray(item[1]).item() for item in items]) if pairs else None
    except (ValueError, TypeError, KeyError) as error:
        raise UsageError(f"data {ref}: items differ in shape or type ({error})") from error
    x = {k: _inputs(ref, k, v if v.ndim >= 2 else v.reshape(len(v), 1)) for k, v in stacked.items()}
    return split_arrays(ref, x, None if y is None else _targets(ref, y, count(x)), seed)


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


def calibration_sample(splits: Splits, samples: int, seed: int) -> dict[str, np.ndarray]:
    """`samples` rows of the training split (never test), drawn without replacement, seeded."""
    rng = np.random.default_rng(seed)
    total = count(splits.x_train)
    rows = np.sort(rng.choice(total, size=min(samples, total), replace=False))
    return take(splits.x_train, rows)
