"""What an operator meets first: ports, listening host, serve.sh, client URLs and load bounds, README snippet, chart."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from server_process import READY, ROOT, ServerProcess, start_server
from tiny_repository import write_tiny_repository

from clients.address import with_default_port
from compression.report import chart_figure
from server.settings import parse_settings


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without SLIMSERVE_* settings (so only the test's own apply), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SLIMSERVE_")}, **extra}


def _run(*cmd: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or _env())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port with a listener on it, as another server would hold it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


# ---- server: ports and host ----

def test_busy_grpc_port_exits_1_with_one_line(tiny_repo: Path, busy_port: int) -> None:
    """One line, before any model loads (tests/test_metrics_http.py has the metrics port's twin)."""
    done = _run(sys.executable, "-m", "server", "--model-repository", str(tiny_repo), "--grpc-port", str(busy_port),
                "--metrics-port", "0")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"slimserve: cannot listen on 127.0.0.1:{busy_port} for gRPC: address in use "
        "(is another server running? pick --grpc-port)"
    ]
    assert done.stdout == ""


@pytest.mark.parametrize(("args", "env", "fragment"), [
    (["--grpc-port", "-5"], {}, "--grpc-port -5"),
    (["--grpc-port", "70000"], {}, "--grpc-port 70000"),
    (["--metrics-port", "-2"], {}, "--metrics-port -2"),
    (["--metrics-port", "65536"], {}, "--metrics-port 65536"),
    ([], {"SLIMSERVE_GRPC_PORT": "99999"}, "--grpc-port 99999"),
])
def test_port_out_of_range_exits_2(tmp_path: Path, args: list[str], env: dict[str, str], fragment: str) -> None:
    """gRPC would wrap these (-5 binds 65531, 70000 binds 4464): refused before anything starts."""
    done = _run(sys.executable, "-m", "server", "--model-repository", str(tmp_path), *args, env=_env(**env))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and fragment in done.stderr and "Traceback" not in done.stderr


def _wait_for_line(server: ServerProcess, fragment: str, timeout: float = 30) -> bool:
    """Whether the server prints a line holding `fragment` (lines after the ready line arrive in the background)."""
    deadline = time.monotonic() + timeout
    while not any(fragment in line for line in server.lines):
        if time.monotonic() > deadline or server.process.poll() is not None:
            return False
        time.sleep(0.01)
    return True


def _outward_ipv4() -> str | None:
    """This machine's address on its default route (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing table is consulted
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(("host_env", "shown"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_default_host_is_loopback_and_the_line_says_what_is_bound(
    tiny_repo: Path, monkeypatch: pytest.MonkeyPatch, host_env: str | None, shown: str
) -> None:
    assert parse_settings([], environ={}).host == "127.0.0.1"
    monkeypatch.delenv("SLIMSERVE_HOST", raising=False)
    server = start_server(tiny_repo, host=None, env={"SLIMSERVE_HOST": host_env} if host_env else None)
    try:
        ready = next(READY.search(line) for line in server.lines if READY.search(line))
        assert ready.group(1) == shown
        assert _wait_for_line(server, f"--url 127.0.0.1:{server.grpc_port} ")  # a dialable address to try
        outward = _outward_ipv4()
        if outward is not None:  # another interface of this machine: reached only when bound to 0.0.0.0
            assert _reachable(outward, server.grpc_port) == (shown == "0.0.0.0")
    finally:
        server.stop()


def test_ipv6_wildcard_is_printed_in_brackets(tiny_repo: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::", 0))
    except OSError:
        pytest.skip("no IPv6 on this machine")
    server = start_server(tiny_repo, host="::")  # its READY line must parse, or this raises
    try:
        assert any(f"gRPC on [::]:{server.grpc_port}, metrics http://[::]:" in line for line in server.lines)
        assert _wait_for_line(server, f"--url [::1]:{server.grpc_port} ")
    finally:
        server.stop()


def test_deploy_listens_on_every_interface() -> None:
    """The image and the Kubernetes config both say 0.0.0.0: the server's own default (loopback) reaches no pod."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^ENV .*\bSLIMSERVE_HOST=0\.0\.0\.0\b", dockerfile, re.M)
    config = yaml.safe_load((ROOT / "deploy" / "base" / "configmap.yaml").read_text())
    assert parse_settings([], environ=config["data"]).host == "0.0.0.0"


# ---- scripts/serve.sh ----

@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """serve.sh in a stand-in checkout whose setup.sh and .venv/bin/python only log their arguments."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "serve.sh", root / "scripts" / "serve.sh")
    log = root / "calls.log"
    python = '#!/usr/bin/env bash\necho "python $*" >> "%s"\n' % log
    (root / "scripts" / "setup.sh").write_text(
        '#!/usr/bin/env bash\necho setup >> "%s"\nmkdir -p .venv/bin\ncat > .venv/bin/python <<\'EOF\'\n%sEOF\n'
        'chmod +x .venv/bin/python\n' % (log, python)
    )
    (root / "scripts" / "setup.sh").chmod(0o755)
    return root


def _serve_sh(root: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    ports = {"SLIMSERVE_GRPC_PORT": str(_free_port()), "SLIMSERVE_METRICS_PORT": str(_free_port())}
    done = _run("bash", str(root / "scripts" / "serve.sh"), *args, env=_env(**{**ports, **env}), cwd=root)
    log = root / "calls.log"
    return done, log.read_text().splitlines() if log.exists() else []


def _with_repository(root: Path, venv: bool = True) -> None:
    (root / "model_repository" / "digits").mkdir(parents=True)
    (root / "model_repository" / "digits" / "manifest.json").write_text("{}")
    if venv:
        subprocess.run(["bash", str(root / "scripts" / "setup.sh")], cwd=root, check=True)
        (root / "calls.log").unlink()


@pytest.mark.parametrize("variable", ["SLIMSERVE_GRPC_PORT", "SLIMSERVE_METRICS_PORT"])
def test_serve_sh_checks_ports_before_setup_and_build(checkout: Path, busy_port: int, variable: str) -> None:
    done, calls = _serve_sh(checkout, **{variable: str(busy_port)})
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and f"port {busy_port}" in done.stderr and "in use" in done.stderr
    assert calls == []  # neither setup nor a build ran


def test_serve_sh_serves_an_existing_repository_without_setup_or_build(checkout: Path) -> None:
    _with_repository(checkout)
    done, calls = _serve_sh(checkout)
    assert done.returncode == 0, done.stderr
    assert calls == ["python -m server"]


def test_serve_sh_first_run_sets_up_builds_and_serves(checkout: Path) -> None:
    done, calls = _serve_sh(checkout)
    assert done.returncode == 0, done.stderr
    assert calls == ["setup", "python -m compression.build", "python -m server"]


def test_serve_sh_rebuild_passes_build_flags(checkout: Path) -> None:
    _with_repository(checkout)
    done, calls = _serve_sh(checkout, "--rebuild", "--variants", "int8")
    assert done.returncode == 0, done.stderr
    assert calls == ["setup", "python -m compression.build --variants int8", "python -m server"]


def test_serve_sh_build_flags_without_rebuild_exit_2(checkout: Path) -> None:
    _with_repository(checkout)
    done, calls = _serve_sh(checkout, "--teacher", "minilm")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "--rebuild" in done.stderr
    assert calls == []


# ---- clients ----

@pytest.mark.parametrize(("url", "expected"), [
    ("localhost", "localhost:8001"),
    ("localhost:9000", "localhost:9000"),
    ("127.0.0.1", "127.0.0.1:8001"),
    ("[::1]", "[::1]:8001"),
    ("[::1]:9000", "[::1]:9000"),
    ("::1", "[::1]:8001"),
    ("serving.example:", "serving.example:8001"),
])
def test_url_without_port_means_8001(url: str, expected: str) -> None:
    assert with_default_port(url) == expected


def test_cli_and_client_apply_the_default_port() -> None:
    # In a child process: tritonclient's generated protos and the server's collide in one process.
    code = ("from clients.cli import build_parser; from clients.client import Client; "
            "print(build_parser().parse_args(['infer', '--url', 'localhost', '--model', 'm']).url); "
            "print(Client('[::1]').url)")
    done = _run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["localhost:8001", "[::1]:8001"]


def _load(server: ServerProcess, *limits: str) -> tuple[int, float, float]:
    """(requests, seconds the report states, seconds the process took) of one `clients load`."""
    began = time.monotonic()
    done = _run(sys.executable, "-m", "clients", "load", "--url", server.url, "--model", "tiny",
                "--variant", "small", "--concurrency", "2", *limits, timeout=120)
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    found = re.search(r"requests: (\d+) in (\d+\.\d+) s", done.stdout)
    assert found, done.stdout
    return int(found.group(1)), float(found.group(2)), took


def test_load_duration_alone_runs_that_long(tiny_server: ServerProcess) -> None:
    """No request cap: it sends until the time is up (however fast the server), then stops."""
    requests, seconds, took = _load(tiny_server, "--duration", "1.5")
    assert requests > 0 and seconds >= 1.5 and took >= 1.5


def test_load_requests_alone_sends_exactly_that_many(tiny_server: ServerProcess) -> None:
    requests, _, _ = _load(tiny_server, "--requests", "40")
    assert requests == 40


def test_load_limits_from_the_command_line() -> None:
    """A duration alone leaves the request count open (before: capped at 10,000, which won at 3.6 s)."""
    code = ("from clients.cli import build_parser; p = build_parser(); "
            "a = p.parse_args(['load', '--model', 'm', '--duration', '10']); print(a.duration, a.requests); "
            "a = p.parse_args(['load', '--model', 'm', '--requests', '5']); print(a.duration, a.requests)")
    done = _run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["10.0 None", "None 5"]


# ---- README ----

def test_readme_tritonclient_snippet_runs(digits_repo: Path, tmp_path: Path) -> None:
    """The README's Python snippet, as printed, against a real server on the real default build."""
    snippet = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert snippet, "README has no python snippet"
    (tmp_path / "model_repository").symlink_to(digits_repo, target_is_directory=True)  # "from the repository root"
    server = start_server(digits_repo)
    try:
        code = snippet.group(1).replace("127.0.0.1:8001", server.url)
        done = _run(sys.executable, "-c", code, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        variant, predicted, labels = re.fullmatch(r"(\S+) \[([\d ]+)\] \[([\d ]+)\]\n", done.stdout).groups()
        assert variant == "int8" and len(predicted.split()) == len(labels.split()) == 4
    finally:
        server.stop()


# ---- compression report: chart ----

def _digits_like_manifest() -> dict:
    """The variants of a digits build (latency ms, accuracy, bytes) whose labels used to overlap."""
    figures = {"teacher": (0.47, 0.9806, 6_131_335), "distilled": (0.062, 0.975, 457_726),
               "pruned": (0.135, 0.975, 1_628_932), "int8": (0.17, 0.9806, 1_576_475),
               "distilled+int8": (0.053, 0.975, 129_270), "pruned+int8": (0.074, 0.975, 431_675),
               "shared": (0.44, 0.9806, 786_000)}
    return {"name": "digits", "primary_metric": "accuracy", "variants": {
        name: {"bytes": size, "quality": {"accuracy": accuracy},
               "latency": {"threads": 1, "cpu": "test", "batch_1": {"p50_ms": p50}}}
        for name, (p50, accuracy, size) in figures.items()}}


def test_chart_labels_overlap_nothing_and_say_in_process_microseconds() -> None:
    from matplotlib import pyplot as plt
    from matplotlib.text import Text

    fig = chart_figure(_digits_like_manifest())
    try:
        ax = fig.axes[0]
        renderer = fig.canvas.get_renderer()
        labels = []
        for text in ax.texts:
            text.update_positions(renderer)
            labels.append(Text.get_window_extent(text, renderer))  # the text alone, without its leader line
        assert len(labels) == 7
        for i, a in enumerate(labels):
            assert all(not a.overlaps(b) for b in labels[i + 1:]), ax.texts[i].get_text()
        # No label on another bubble (boxes around the circles, as drawn).
        for label, text in zip(labels, ax.texts):
            for collection in ax.collections:
                (x, y), = collection.get_offsets()
                owner = text.xy == (x, y)
                cx, cy = ax.transData.transform((x, y))
                r = (collection.get_sizes()[0] ** 0.5) / 2 * fig.dpi / 72
                assert owner or not (label.x1 > cx - r and label.x0 < cx + r and label.y1 > cy - r and label.y0 < cy + r), \
                    text.get_text()
        low, high = ax.get_ylim()
        assert high - low >= 0.05  # sub-point differences must not fill the height
        assert "in-process ONNX Runtime latency, µs" in ax.get_xlabel()
        low, high = ax.get_xlim()
        assert low < 53 and 470 < high < 10_000  # 53 to 470 µs: microseconds on the axis, not milliseconds
    finally:
        plt.close(fig)


def test_report_is_redrawn_from_the_manifest_without_a_rebuild(tmp_path: Path) -> None:
    folder = write_tiny_repository(tmp_path)
    done = _run(sys.executable, "-m", "compression.report", str(folder))
    assert done.returncode == 0, done.stderr
    assert (folder / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](chart.png)" in (folder / "report.md").read_text()
    missing = _run(sys.executable, "-m", "compression.report", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1

