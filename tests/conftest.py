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
