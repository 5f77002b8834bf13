"""Atomic writing: staged model folders, the manifest file, and schema validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelrepo.files import staged_model_dir, write_json_atomic
from modelrepo.schema import validate


def make_old(root: Path) -> Path:
    old = root / "digits"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text("old")
    return old


def test_success_swaps_the_new_folder_in(tmp_path: Path) -> None:
    old = make_old(tmp_path)
    with staged_model_dir(tmp_path, "digits") as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".digits.partial-")
        (staging / "manifest.json").write_text("new")
        assert (old / "manifest.json").read_text() == "old"  # untouched until the end
    assert (old / "manifest.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]


def test_failure_midway_leaves_previous_folder_intact(tmp_path: Path) -> None:
    old = make_old(tmp_path)
    with pytest.raises(RuntimeError):
        with staged_model_dir(tmp_path, "digits") as staging:
            (staging / "teacher").mkdir()
            (staging / "teacher" / "model.onnx").write_bytes(b"half")
            raise RuntimeError("variant failed")
    assert (old / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["digits", "manifest.json"]


def test_interrupt_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with staged_model_dir(tmp_path, "digits") as staging:
            (staging / "heldout.npz").write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("old")
    write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left


def test_validate_reports_missing_keys() -> None:
    problems = validate({"schema_version": 1})
    assert any("'variants'" in p for p in problems)
    assert any("'routing'" in p for p in problems)
