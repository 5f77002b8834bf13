"""`python -m clients compress` / `job` and `Client.compress` / `watch_job` against a real server on the digits build."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import psutil
import pytest
from server_process import ROOT, ServerProcess, start_server
from waits import sigstop

from clients.compress import ProgressView
from clients.jobs import JOB_STATES, NAME_RULE, JobStatus, default_variant_name
from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc

MODEL = "digits"
TOKEN = "compress-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
JOB_SECONDS = 600  # a whole job on 2 busy cores; only a bound for a hang, never waited out when things work
PROGRESS = re.compile(r"^(PENDING|RUNNING|SUCCEEDED|FAILED)\s+(\d+\.\d)%\s+(.*?)\s+\d+\.\d s$")


@pytest.fixture(scope="module")
def server(digits_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on a private copy of the build (jobs write into it), compression calls guarded by a token."""
    repo = Path(shutil.copytree(digits_repo, tmp_path_factory.mktemp("compress") / "repo", symlinks=True))
    # Job data the server may read: one file whose rows have the wrong width, so a job that names it passes
    # every check made when it is asked for and fails when its process reads the file.
    data = tmp_path_factory.mktemp("job_data")
    np.savez(data / "narrow.npz", input=np.zeros((8, 3), np.float32))
    process = start_server(repo, "--admin-token", TOKEN, "--job-data-dir", str(data))
    yield process
    process.stop()


def _cli(server: ServerProcess, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SLIMSERVE_ADMIN_TOKEN"}
    if token is not None:
        env["SLIMSERVE_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "clients", *args, "--url", server.url], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=JOB_SECONDS)


def _admin(server: ServerProcess) -> cpb_grpc.CompressionServiceStub:
    return cpb_grpc.CompressionServiceStub(grpc.insecure_channel(server.url))


def _listed(server: ServerProcess, name: str) -> cpb.VariantInfo:
    reply = _admin(server).ListVariants(cpb.ListVariantsRequest(model=MODEL), timeout=30, metadata=AUTH)
    return {v.name: v for v in reply.variants}[name]


def _state(server: ServerProcess, job_id: str) -> int:
    return _admin(server).GetJob(cpb.GetJobRequest(id=job_id), timeout=30, metadata=AUTH).state


def _figures(stdout: str) -> dict[str, str]:
    return dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in stdout.splitlines()))


def _assert_in_order(progress: list[tuple[str, float, str]]) -> None:
    """States never go back, percent never drops, a stage once left never comes back, and it ends done."""
    states = [JOB_STATES.index(state) for state, _, _ in progress]
    assert states == sorted(states), progress
    percents = [percent for _, percent, _ in progress]
    assert percents == sorted(percents), progress
    stages = [(state, step) for state, _, step in progress]
    runs = [stage for i, stage in enumerate(stages) if i == 0 or stages[i - 1] != stage]
    assert len(runs) == len(set(runs)), progress
    assert progress[-1][0] == "SUCCEEDED" and progress[-1][1] == 100.0, progress


def _assert_figures_match(figures: dict[str, str], listed: cpb.VariantInfo) -> None:
    assert figures["variant"] == f"{MODEL}/{listed.name}"
    assert int(figures["bytes"]) == listed.bytes > 0
    assert int(figures["parameters"]) == listed.parameters > 0
    assert figures["sha256"] == listed.sha256
    assert figures["p50_ms_batch1"] == f"{listed.p50_ms_batch1:.3f}"
    assert figures["quality"] == " ".join(f"{k}={v:.4f}" for k, v in sorted(listed.quality.items()))
    assert "accuracy=" in figures["quality"]


def test_compress_streams_progress_in_order_and_ends_with_the_manifest_figures(server: ServerProcess) -> None:
    done = _cli(server, "compress", "--model", MODEL, "--recipe", "int8_dynamic")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stderr.splitlines()
    job_id = re.fullmatch(r"job (\w+): making digits/teacher-int8_dynamic from teacher with int8_dynamic", header)
    assert job_id, header
    progress = []
    for line in lines:  # not a terminal: one plain line per change, nothing else
        match = PROGRESS.match(line)
        assert match, line
        progress.append((match.group(1), float(match.group(2)), match.group(3)))
    _assert_in_order(progress)
    figures = _figures(done.stdout)
    assert figures["job"].startswith(job_id.group(1))
    assert figures["recipe"] == "int8_dynamic" and figures["parent"] == "teacher"
    _assert_figures_match(figures, _listed(server, "teacher-int8_dynamic"))


# Runs in a child process: tritonclient's generated protos collide with the server's in one process.
# Prints one JSON line: the created job, every update, a second watch of the ended job, a second job (its
# default name and how it failed) and the error of watching an unknown job.
API_DRIVER = r"""
import dataclasses, json, sys
from clients.client import Client
from clients.errors import ServerError

with Client(sys.argv[1], token=sys.argv[2]) as client:
    job = client.compress("digits", "int8_static", parent="distilled", params={"per_channel": "true"})
    updates = list(client.watch_job(job.id, idle_timeout=600))
    again = list(client.watch_job(job.id))
    second = client.compress("digits", "int8_static", parent="distilled", data="narrow.npz")
    failed = list(client.watch_job(second.id, idle_timeout=600))[-1]
    try:
        list(client.watch_job("no-such-job"))
        missing = ""
    except ServerError as exc:
        missing = exc.code
print(json.dumps({"job": dataclasses.asdict(job), "updates": [dataclasses.asdict(u) for u in updates],
                  "again": [dataclasses.asdict(u) for u in again], "second": second.variant,
                  "failed": dataclasses.asdict(failed), "missing": missing}))
"""


def test_client_watch_job_yields_updates_ending_with_the_listed_variant(server: ServerProcess) -> None:
    done = subprocess.run([sys.executable, "-c", API_DRIVER, server.url, TOKEN], cwd=ROOT, capture_output=True,
                          text=True, timeout=JOB_SECONDS)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    job, updates = seen["job"], seen["updates"]
    assert job["variant"] == "distilled-int8_static" and job["state"] in ("PENDING", "RUNNING")
    assert [u["id"] for u in updates] == [job["id"]] * len(updates)
    _assert_in_order([(u["state"], u["percent"], u["step"]) for u in updates])
    listed = _listed(server, "distilled-int8_static")
    result = updates[-1]["result"]
    assert (result["name"], result["sha256"], result["bytes"], result["parameters"], result["quality"],
            result["p50_ms_batch1"]) == (listed.name, listed.sha256, listed.bytes, listed.parameters,
                                         dict(listed.quality), listed.p50_ms_batch1)
    assert result["recipe"]["params"]["per_channel"] is True
    # An ended job streams once more: its final state.
    assert len(seen["again"]) == 1 and seen["again"][0]["state"] == "SUCCEEDED" and seen["again"][0]["result"] == result
    # Without a name, the default moves on when it is taken; a job that fails ends FAILED with the reason.
    assert seen["second"] == "distilled-int8_static-2"
    assert seen["failed"]["state"] == "FAILED" and "narrow.npz" in seen["failed"]["message"], seen["failed"]
    assert seen["failed"]["result"] is None
    assert seen["missing"] == "NOT_FOUND"


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_bad_recipe_missing_token_and_bad_param_fail_in_one_line(server: ServerProcess) -> None:
    bad = _cli(server, "compress", "--model", MODEL, "--recipe", "no_such_recipe", "--name", "bad-recipe")
    assert bad.returncode in (1, 2) and bad.stdout == ""
    assert "no_such_recipe" in _one_error_line(bad)
    anonymous = _cli(server, "job", "abc123", token=None)
    assert anonymous.returncode == 1
    assert "UNAUTHENTICATED" in _one_error_line(anonymous) and anonymous.stderr.count("\n") == 1
    unknown = _cli(server, "job", "abc123")
    assert unknown.returncode == 1 and "NOT_FOUND" in _one_error_line(unknown)
    param = _cli(server, "compress", "--model", MODEL, "--recipe", "int8_dynamic", "--param", "per_channel")
    assert param.returncode == 2 and "--param" in _one_error_line(param)


def test_failed_job_exits_1_with_the_servers_reason(server: ServerProcess) -> None:
    done = _cli(server, "compress", "--model", MODEL, "--recipe", "int8_static", "--name", "failing",
                "--data", "narrow.npz")
    assert done.returncode == 1 and done.stdout == ""
    *progress, last = done.stderr.splitlines()[1:]
    assert [PROGRESS.match(line).group(1) for line in progress][-1] == "FAILED"  # type: ignore[union-attr]
    assert last == _one_error_line(done)
    assert re.fullmatch(r"error: job \w+ \(digits/failing\) failed: .*narrow\.npz.*", last), last


def _job_child(server: ServerProcess) -> psutil.Process | None:
    """The process making the variant (`python -m server.onthefly` or another `*.onthefly` module), if any."""
    for child in psutil.Process(server.process.pid).children():
        try:
            if any(arg.endswith(".onthefly") for arg in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_ctrl_c_leaves_the_job_running_and_job_reattaches(server: ServerProcess) -> None:
    """Ctrl-C while the job's child is frozen mid-flight (so the job cannot end first, however fast the machine):
    exit 130 naming the job; `job ID` then follows it to the end."""
    env = {**os.environ, "SLIMSERVE_ADMIN_TOKEN": TOKEN}
    for attempt in range(3):  # the child may finish before it is frozen: then try again
        name = f"ctrl-c-{attempt}"
        cli = subprocess.Popen([sys.executable, "-m", "clients", "compress", "--model", MODEL, "--recipe",
                                "int8_dynamic", "--name", name, "--url", server.url], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert cli.stderr is not None
        job_id = cli.stderr.readline().split()[1].rstrip(":")
        child = None
        for line in cli.stderr:
            match = PROGRESS.match(line.rstrip("\n"))
            if match and match.group(1) == "RUNNING" and match.group(3) not in ("starting", "loading"):
                child = _job_child(server)
                break
        if child is None or not sigstop(child):
            cli.communicate(timeout=JOB_SECONDS)
            continue
        try:
            assert _state(server, job_id) == cpb.Job.RUNNING
            cli.send_signal(signal.SIGINT)
            out, err = cli.communicate(timeout=JOB_SECONDS)
            assert cli.returncode == 130, err
            assert out == "" and "Traceback" not in err
            assert f"job {job_id} keeps running on the server" in err
            assert f"python -m clients job {job_id} --url {server.url}" in err
            assert _state(server, job_id) == cpb.Job.RUNNING
        finally:
            child.send_signal(signal.SIGCONT)
        again = _cli(server, "job", job_id)
        assert again.returncode == 0, again.stderr
        assert again.stderr.splitlines()[0] == f"job {job_id}: making digits/{name} from teacher with int8_dynamic"
        _assert_figures_match(_figures(again.stdout), _listed(server, name))
        return
    raise AssertionError("could not catch a job while it was running")


def _status(state: str, step: str, percent: float, **quality: float) -> JobStatus:
    return JobStatus(id="j1", model=MODEL, variant="v", state=state, step=step, percent=percent, quality=quality,
                     started_unix=1.0, finished_unix=3.5 if state == "SUCCEEDED" else 0.0)


def test_progress_view_plain_lines_per_change_and_one_redrawn_terminal_line() -> None:
    updates = [_status("RUNNING", "epoch 1/2", 40.0, accuracy=0.9), _status("RUNNING", "epoch 1/2", 40.0, accuracy=0.9),
               _status("RUNNING", "epoch 2/2", 80.0, accuracy=0.95), _status("SUCCEEDED", "done", 100.0)]
    plain = io.StringIO()
    view = ProgressView(plain, tty=False)
    for update in updates:
        view.update(update)
    view.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 3  # the repeat is not shown again
    assert [PROGRESS.match(line).group(1, 2, 3) for line in lines] == [  # type: ignore[union-attr]
        ("RUNNING", "40.0", "epoch 1/2  quality accuracy=0.9000"),
        ("RUNNING", "80.0", "epoch 2/2  quality accuracy=0.9500"), ("SUCCEEDED", "100.0", "done")]
    assert lines[-1].endswith("2.5 s")
    terminal = io.StringIO()
    view = ProgressView(terminal, tty=True, width=200)
    for update in updates:
        view.update(update)
    assert "\n" not in terminal.getvalue() and terminal.getvalue().count("\r\x1b[K") == 4
    assert "[########------------]  40.0%" in terminal.getvalue()
    view.close()
    assert terminal.getvalue().endswith("[####################] 100.0%  done  2.5 s\n")


def test_compress_modules_do_not_load_tritonclient_grpc() -> None:
    code = "import sys, clients.compress, clients.jobs; sys.exit('tritonclient.grpc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


@pytest.mark.parametrize(("parent", "recipe", "taken", "expected"), [
    ("teacher", "distilled+int8_dynamic", (), "teacher-distilled+int8_dynamic"),
    ("", "int8_dynamic", ("teacher-int8_dynamic",), "teacher-int8_dynamic-2"),
    ("teacher", "int8 dynamic/x", ("teacher-int8-dynamic-x", "teacher-int8-dynamic-x-2"), "teacher-int8-dynamic-x-3"),
    ("_hidden", "pruned", (), "hidden-pruned"),
    ("p" * 80, "pruned", ("p" * 60,), "p" * 60 + "-2"),
])
def test_default_variant_name_follows_the_server_rule(parent: str, recipe: str, taken: tuple, expected: str) -> None:
    name = default_variant_name(parent, recipe, taken)
    assert name == expected and NAME_RULE.match(name)
