"""A run alone in the process takes every core (the variant's wide session); overlapping runs keep one
thread each; both answer the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_repository import FEATURES, write_tiny_repository
from tiny_text_repository import write_text_repository

from server import runtime
from server.runtime import Session


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("lone")) / "teacher" / "model.onnx"


def test_a_lone_run_takes_the_wide_session_and_an_overlapping_one_does_not(mlp: Path) -> None:
    session = Session(mlp, intra_op_threads=1, lone_threads=2)
    x = {"input": np.ones((3, FEATURES), np.float32)}
    alone = session.run(x)
    assert session.lone_runs == 1
    runtime._RUNS.start()  # another run in progress in the process, of this or any other variant
    try:
        overlapping = session.run(x)
    finally:
        runtime._RUNS.end()
    assert session.lone_runs == 1
    np.testing.assert_allclose(overlapping[0], alone[0], rtol=1e-5, atol=1e-6)
    session.run(x)
    assert session.lone_runs == 2  # the count went back to zero: alone again


def test_one_lone_thread_opens_no_second_session(mlp: Path) -> None:
    session = Session(mlp, intra_op_threads=1, lone_threads=1)
    session.run({"input": np.ones((1, FEATURES), np.float32)})
    assert session.lone_runs == 0 and len(session._sessions()) == 1


def test_token_model_answers_the_same_on_either_session(tmp_path: Path) -> None:
    """Intra-op threads split the work, not the arithmetic's meaning: the same rows give the same
    embeddings alone (2 threads) and under load (1 thread), to float rounding."""
    path = write_text_repository(tmp_path) / "teacher" / "model.onnx"
    session = Session(path, intra_op_threads=1, max_tokens_per_run=1024, lone_threads=2)
    rng = np.random.default_rng(0)
    feeds = {name: (rng.integers(1, 18, size=(4, 24)) if name == "input_ids" else np.ones((4, 24))).astype(dtype)
             for name, dtype in session.input_dtypes.items()}
    alone = session.run(feeds)
    runtime._RUNS.start()
    try:
        overlapping = session.run(feeds)
    finally:
        runtime._RUNS.end()
    assert session.lone_runs == 1
    for a, b in zip(alone, overlapping):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
