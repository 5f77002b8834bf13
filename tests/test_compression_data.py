"""Data sources for `--data`: built-in, .npz (with and without labels), Dataset factories; splits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from compression.data import bind_inputs, calibration_sample, load_data
from compression.errors import UsageError


def test_builtin_digits_split_is_stratified_and_fixed() -> None:
    a, b = load_data("digits", 0), load_data("digits", 0)
    assert a.sizes() == {"train": 1077, "validation": 360, "test": 360}
    assert a.stratified and a.labelled and a.classes == 10
    assert np.array_equal(a.x_test["x"], b.x_test["x"])
    assert not np.array_equal(a.x_test["x"], load_data("digits", 1).x_test["x"])


def test_npz_with_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((50, 3, 4)).astype(np.float64)
    y = np.repeat(np.arange(5), 10).astype(np.float32)  # integral floats are accepted as labels
    np.savez(tmp_path / "d.npz", x=x, y=y, labels=np.array(list("abcde")))
    s = load_data(str(tmp_path / "d.npz"), 3)
    assert s.sizes() == {"train": 30, "validation": 10, "test": 10}
    assert s.x_train["x"].dtype == np.float32 and s.x_train["x"].shape[1:] == (3, 4)
    assert s.y_train.dtype == np.int64 and s.labels == list("abcde") and s.stratified
    rows = {r.tobytes() for part in (s.x_train, s.x_val, s.x_test) for r in part["x"]}
    assert len(rows) == 50  # a partition: no row in two splits


def test_npz_without_labels_and_integer_rows(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(40 * 6).reshape(40, 6))
    s = load_data(str(tmp_path / "d.npz"), 0)
    assert not s.labelled and s.y_test is None and s.classes is None
    assert s.x_train["x"].dtype == np.int64  # token-like inputs keep their integer type
    assert len(calibration_sample(s, 1000, 0)["x"]) == len(s.x_train["x"])


def test_npz_with_several_named_inputs_keeps_rows_together(tmp_path: Path) -> None:
    x1 = np.arange(40, dtype=np.float32).reshape(40, 1) * np.ones((1, 3), np.float32)
    x2 = np.arange(40, dtype=np.int64).reshape(40, 1) * np.ones((1, 5), np.int64)
    np.savez(tmp_path / "two.npz", x1=x1, x2=x2, y=np.arange(40) % 2)
    s = load_data(str(tmp_path / "two.npz"), 0)
    assert s.input_names == ["x1", "x2"] and s.labelled
    for part in (s.x_train, s.x_val, s.x_test):  # row i of x1 still belongs with row i of x2
        assert np.array_equal(part["x1"][:, 0].astype(np.int64), part["x2"][:, 0])
    assert set(calibration_sample(s, 8, 0)) == {"x1", "x2"}
    bound = bind_inputs(s, ["x2", "x1"], "t")  # matched by name, in the teacher's order
    assert list(bound.x_train) == ["x2", "x1"]
    with pytest.raises(UsageError, match="teacher t takes inputs a, b: name one array after each input"):
        bind_inputs(s, ["a", "b"], "t")
    assert list(bind_inputs(load_data("digits", 0), ["pixels"], "t").x_test) == ["pixels"]


def test_npz_inputs_with_different_row_counts_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x1=np.zeros((20, 2)), x2=np.zeros((19, 2)))
    with pytest.raises(UsageError, match="differ in rows"):
        load_data(str(tmp_path / "bad.npz"), 0)


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
    assert s.x_train["x"].shape[1:] == (2, 2) and s.labelled and set(s.y_train) <= {0, 1}
    s = load_data(f"{tmp_path / 'mydata.py'}:plain", 0)
    assert s.x_train["x"].shape[1:] == (2,) and not s.labelled
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
