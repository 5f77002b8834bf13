"""End-to-end tests of `python -m clients` against a real server process serving the tiny repository."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clients", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def run_onnx(repo: Path, variant: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(repo / "tiny" / variant / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("|") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("data") / "heldout.npz"
    np.savez(path, x=rng.normal(size=(40, 8)).astype(np.float32), y=rng.integers(0, 3, size=40))
    return path


@pytest.mark.parametrize("variant", ["teacher", "small"])
def test_infer_prints_what_onnxruntime_computes(tiny_server: ServerProcess, tiny_repo: Path, tmp_path: Path,
                                                variant: str) -> None:
    x = np.random.default_rng(3).normal(size=(1, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_cli("infer", "--url", tiny_server.url, "--model", "tiny", "--variant", variant,
                     "--input", str(tmp_path / "x.npy"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"served by variant {variant}" in out
    values_text = out.split("output logits FP32 [1, 3]:")[1].split("row 0:")[0]
    printed = np.array([float(v) for v in NUMBER.findall(values_text)], dtype=np.float32)
    expected = run_onnx(tiny_repo, variant, x)
    np.testing.assert_allclose(printed, expected.reshape(-1), atol=1e-5)
    assert f"row 0: top class {int(expected.argmax())}," in out


def test_infer_npz_row_and_routing_default(tiny_server: ServerProcess, tiny_repo: Path, heldout: Path) -> None:
    result = run_cli("infer", "--url", tiny_server.url, "--model", "tiny", "--npz", str(heldout), "--row", "5")
    assert result.returncode == 0, result.stderr
    assert "served by variant teacher" in result.stdout  # the tiny model's policy: fixed teacher
    x = np.load(heldout)["x"][5:6]
    top = int(run_onnx(tiny_repo, "teacher", x).argmax())
    assert f"row 0: top class {top}," in result.stdout


def test_infer_random(tiny_server: ServerProcess) -> None:
    result = run_cli("infer", "--url", tiny_server.url, "--model", "tiny", "--variant", "small", "--random")
    assert result.returncode == 0, result.stderr
    assert "output logits FP32 [1, 3]" in result.stdout and "probability" in result.stdout


def test_compare_every_variant(tiny_server: ServerProcess, tiny_repo: Path, heldout: Path) -> None:
    result = run_cli("compare", "--url", tiny_server.url, "--metrics-url", tiny_server.metrics_url,
                     "--model", "tiny", "--data", str(heldout), "--batch", "4")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    header = rows["variant"]
    assert set(rows) >= {"teacher", "small"}
    teacher, small = dict(zip(header, rows["teacher"])), dict(zip(header, rows["small"]))
    assert float(teacher["agreement"]) == 1.0
    data = np.load(heldout)
    top = {v: run_onnx(tiny_repo, v, data["x"]).argmax(axis=1) for v in ("teacher", "small")}
    assert float(teacher["accuracy"]) == pytest.approx(np.mean(top["teacher"] == data["y"]), abs=1e-3)
    assert float(small["agreement"]) == pytest.approx(np.mean(top["small"] == top["teacher"]), abs=1e-3)
    for row in (teacher, small):
        assert float(row["p50 ms"]) > 0 and float(row["p95 ms"]) >= float(row["p50 ms"])
        assert float(row["server compute ms"]) > 0
        assert float(row["memory MiB"]) >= 0


def test_compare_says_when_metrics_are_unreachable(tiny_server: ServerProcess, heldout: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/metrics"
    result = run_cli("compare", "--url", tiny_server.url, "--metrics-url", closed, "--model", "tiny",
                     "--data", str(heldout), "--samples", "10")
    assert result.returncode == 0, result.stderr
    assert "metrics unreachable" in table_rows(result.stdout)["small"]
    assert closed in result.stdout


def test_load_is_bounded_and_error_free(tiny_server: ServerProcess) -> None:
    result = run_cli("load", "--url", tiny_server.url, "--model", "tiny", "--variant", "small",
                     "--concurrency", "2", "--duration", "2", "--requests", "200")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    requests = int(re.search(r"requests: (\d+) in", out).group(1))
    assert 0 < requests <= 200
    assert "errors: 0 (none)" in out
    assert re.search(r"throughput: \d+\.\d req/s", out)
    assert re.search(r"latency ms: p50 \d+\.\d+, p95 \d+\.\d+, p99 \d+\.\d+", out)


def test_unknown_model_is_one_line_not_found(tiny_server: ServerProcess) -> None:
    for command in ("infer", "compare", "load"):
        result = run_cli(command, "--url", tiny_server.url, "--model", "nope")
        line = assert_one_line_error(result)
        assert "NOT_FOUND" in line and "nope" in line


def test_unknown_variant_is_one_line_not_found(tiny_server: ServerProcess) -> None:
    line = assert_one_line_error(run_cli("infer", "--url", tiny_server.url, "--model", "tiny", "--variant", "zzz"))
    assert "NOT_FOUND" in line and "zzz" in line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_line() -> None:
    url = f"127.0.0.1:{free_port()}"
    line = assert_one_line_error(run_cli("infer", "--url", url, "--model", "tiny"))
    assert url in line and "could not reach" in line


def test_bad_input_file_is_one_line(tiny_server: ServerProcess, tmp_path: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((1, 5), dtype=np.float32))
    line = assert_one_line_error(run_cli("infer", "--url", tiny_server.url, "--model", "tiny",
                                         "--input", str(tmp_path / "wrong.npy")))
    assert "does not fit" in line


def test_bad_usage_exits_2() -> None:
    assert run_cli("infer").returncode == 2
    assert run_cli("load", "--model", "tiny", "--concurrency", "0").returncode == 2
    assert run_cli("frobnicate").returncode == 2
