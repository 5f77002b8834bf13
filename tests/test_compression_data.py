"""Data sources for `--data`: built-in, .npz (with and without labels), Dataset factories; splits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from compression.data import calibration_sample, load_data
from compression.errors import UsageError


def test_builtin_digits_split_is_stratified_and_fixed() -> None:
    a, b = load_data("digits", 0), load_data("digits", 0)
    assert a.sizes() == {"train": 1077, "validation": 360, "test": 360}
    assert a.stratified and a.labelled and a.classes == 10
    assert np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, load_data("digits", 1).x_test)


def test_npz_with_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((50, 3, 4)).astype(np.float64)
    y = np.repeat(np.arange(5), 10).astype(np.float32)  # integral floats are accepted as labels
    np.savez(tmp_path / "d.npz", x=x, y=y, labels=np.array(list("abcde")))
    s = load_data(str(tmp_path / "d.npz"), 3)
    assert s.sizes() == {"train": 30, "validation": 10, "test": 10}
    assert s.x_train.dtype == np.float32 and s.x_train.shape[1:] == (3, 4)
    assert s.y_train.dtype == np.int64 and s.labels == list("abcde") and s.stratified
    rows = {r.tobytes() for part in (s.x_train, s.x_val, s.x_test) for r in part}
    assert len(rows) == 50  # a partition: no row in two splits


def test_npz_without_labels_and_integer_rows(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(40 * 6).reshape(40, 6))
    s = load_data(str(tmp_path / "d.npz"), 0)
    assert not s.labelled and s.y_test is None and s.classes is None
    assert s.x_train.dtype == np.int64  # token-like inputs keep their integer type
    assert len(calibration_sample(s, 1000, 0)) == len(s.x_train)


def test_rare_classes_fall_back_to_an_unstratified_split(tmp_path: Path) -> None:
    y = np.zeros(30, np.int64)
    y[0] = 1  # one example of class 1 cannot be in every split
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((30, 2)), y=y)
    s = load_data(str(tmp_path / "d.npz"), 0)
    assert not s.stratified and s.sizes()["test"] == 6


def test_dataset_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "class Pairs(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 20\n"
        "    def __getitem__(self, i): return torch.full((2, 2), float(i)), torch.tensor(i % 2)\n"
        "def pairs(): return Pairs()\n"
        "def plain(): return [[float(i), 1.0] for i in range(20)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = load_data("mydata:pairs", 0)
    assert s.x_train.shape[1:] == (2, 2) and s.labelled and set(s.y_train) <= {0, 1}
    s = load_data(f"{tmp_path / 'mydata.py'}:plain", 0)
    assert s.x_train.shape[1:] == (2,) and not s.labelled
    sys.modules.pop("mydata", None)


@pytest.mark.parametrize("arrays, fragment", [
    ({"x": np.zeros((5, 2))}, "at least 10 are needed"),
    ({"x": np.zeros(20)}, "rows × features"),
    ({"x": np.zeros((20, 2)), "y": np.zeros(19)}, "one label per row"),
    ({"x": np.zeros((20, 2)), "y": np.full(20, 0.5)}, "class indices"),
    ({"x": np.array([["a", "b"]] * 20)}, "expected numbers"),
])
def test_bad_npz_is_a_usage_error(tmp_path: Path, arrays: dict, fragment: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UsageError, match=fragment):
        load_data(str(tmp_path / "d.npz"), 0)


def test_unknown_names_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown data set"):
        load_data("mnist", 0)
    with pytest.raises(UsageError, match="cannot import"):
        load_data("not_a_module_here:make", 0)
