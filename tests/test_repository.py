"""The repository reader refuses what it must: wrong sha256, paths that escape, broken manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_repository import write_tiny_repository

from server.errors import NotFound, RepositoryError
from server.repository import Repository


def test_valid_manifest_loads(tmp_path: Path) -> None:
    write_tiny_repository(tmp_path)
    spec = Repository(tmp_path).load_spec("tiny")
    assert set(spec.variants) == {"teacher", "small"}
    assert spec.inputs[0].shape == (-1, 8)
    Repository.verify(spec.variants["small"], "tiny")


def test_changed_file_fails_sha256(tmp_path: Path) -> None:
    folder = write_tiny_repository(tmp_path)
    with (folder / "small" / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    spec = Repository(tmp_path).load_spec("tiny")
    with pytest.raises(RepositoryError, match="sha256 .* the manifest says .* rebuild it"):
        Repository.verify(spec.variants["small"], "tiny")


@pytest.mark.parametrize("file", ["../../etc/passwd", "/etc/passwd"])
def test_paths_outside_the_model_folder_are_refused(tmp_path: Path, file: str) -> None:
    folder = write_tiny_repository(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["variants"]["small"]["file"] = file
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RepositoryError, match="leaves the model folder"):
        Repository(tmp_path).load_spec("tiny")


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    folder = write_tiny_repository(tmp_path / "repo")
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((folder / "small" / "model.onnx").read_bytes())
    (folder / "small" / "model.onnx").unlink()
    (folder / "small" / "model.onnx").symlink_to(outside)
    with pytest.raises(RepositoryError, match="leaves the model folder"):
        Repository(tmp_path / "repo").load_spec("tiny")


def test_unknown_schema_and_missing_model(tmp_path: Path) -> None:
    folder = write_tiny_repository(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RepositoryError, match="schema_version 99 is not supported"):
        Repository(tmp_path).load_spec("tiny")
    with pytest.raises(NotFound, match="no model 'nope'"):
        Repository(tmp_path).load_spec("nope")


def test_missing_repository_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="python -m compression.build"):
        Repository(tmp_path / "absent").model_names()


def test_external_data_outside_the_variant_folder_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    folder = write_tiny_repository(tmp_path)
    path = folder / "small" / "model.onnx"
    model = onnx.load(str(path))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save(model, str(path))
    spec = Repository(tmp_path).load_spec("tiny")
    Repository(tmp_path).check_external_data(spec.variants["small"])  # inside: fine

    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../outside.bin"
    onnx.save(model, str(path))
    with pytest.raises(RepositoryError, match="outside the variant's folder"):
        Repository(tmp_path).check_external_data(spec.variants["small"])


def test_unreadable_entries_are_not_models() -> None:
    """A volume's root-only `lost+found` beside the models must not stop the server from listing them."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    # Not pytest's tmp_path: its parents are private to us, and the check runs as another user when we are root.
    root = Path(tempfile.mkdtemp(prefix="slimserve-lostfound-"))
    try:
        root.chmod(0o755)
        write_tiny_repository(root)
        (root / "lost+found").mkdir(mode=0o000)
        code = "import sys; from server.repository import Repository; print(Repository(sys.argv[1]).model_names())"
        command = [sys.executable, "-c", code, str(root)]
        if os.geteuid() == 0:  # root reads anything: list as an unprivileged user, as the pods run
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv to drop privileges")
            drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            probe = subprocess.run([*drop, sys.executable, "-c", "import server.repository"], capture_output=True,
                                   timeout=60, cwd=Path(__file__).resolve().parents[1])
            if probe.returncode != 0:
                pytest.skip("the checkout or its venv is not readable by an unprivileged user here")
            command = [*drop, *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 0 and done.stdout.strip() == "['tiny']", done.stderr[-2000:]
    finally:
        (root / "lost+found").chmod(0o700)
        shutil.rmtree(root)
