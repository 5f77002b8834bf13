"""Data sets for the build: fixed, seeded train/validation/test splits, and a calibration sample."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compression.errors import UsageError

__all__ = ["DATASETS", "Splits", "calibration_sample", "load_data"]


@dataclass(frozen=True)
class Splits:
    """A labelled data set cut into train / validation / test, inputs float32, labels int64."""

    name: str
    seed: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]

    def sizes(self) -> dict[str, int]:
        """Rows per split, as recorded in the manifest."""
        return {"train": len(self.x_train), "validation": len(self.x_val), "test": len(self.x_test)}


def _digits(seed: int) -> Splits:
    """scikit-learn's bundled 8x8 digits (1797 images, shipped with the package: no download)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixels are counts 0..16; x/16 puts them in [0, 1] as the ONNX input contract says.
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    # 60/20/20, stratified so every digit is equally represented in each split.
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.25, stratify=y_rest, random_state=seed)
    return Splits("digits", seed, x_train, y_train, x_val, y_val, x_test, y_test,
                  labels=[str(d) for d in range(10)])


# Built-in data sets by name. `.npz` files and `package.module:factory` slot in beside these.
DATASETS: dict[str, Callable[[int], Splits]] = {"digits": _digits}


def load_data(spec: str, seed: int) -> Splits:
    """Load the data set named by `spec` with the split fixed by `seed`."""
    if spec in DATASETS:
        return DATASETS[spec](seed)
    choices = ", ".join(sorted(DATASETS))
    raise UsageError(f"unknown data set {spec!r}; built-in data sets: {choices}")


def calibration_sample(splits: Splits, count: int, seed: int) -> np.ndarray:
    """`count` rows of the training split (never test), drawn without replacement, seeded."""
    rng = np.random.default_rng(seed)
    count = min(count, len(splits.x_train))
    rows = np.sort(rng.choice(len(splits.x_train), size=count, replace=False))
    return splits.x_train[rows]
