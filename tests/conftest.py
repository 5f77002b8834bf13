"""Shared fixtures: a tiny real repository and a real server process serving it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_process import ServerProcess, start_server  # noqa: E402
from tiny_repository import write_tiny_repository  # noqa: E402


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_repo")
    write_tiny_repository(root)
    return root


@pytest.fixture(scope="session")
def tiny_server(tiny_repo: Path) -> Iterator[ServerProcess]:
    server = start_server(tiny_repo)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory: pytest.TempPathFactory):
    """The real default build (`python -m compression.build --out DIR`), once per test session."""
    import subprocess

    root = tmp_path_factory.mktemp("digits_repo")
    done = subprocess.run(
        [sys.executable, "-m", "compression.build", "--out", str(root)],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


@pytest.fixture(scope="session")
def digits_repo(digits_build) -> Path:
    return digits_build[0]
