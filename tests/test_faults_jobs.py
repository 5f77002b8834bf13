"""On-the-fly jobs on the real digits build: every recipe from every kind of graph, killed servers, killed children, stale staging."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from digits_jobs import MODEL, admin_stub, assert_serves, heldout, infer, partials
from onnx import TensorProto, helper, numpy_helper
from server_process import ServerProcess, start_server
from waits import sigstop

from modelrepo.files import hold_staging, release_staging, staged_model_dir
from modelrepo.int8 import QuantizeOptions, budget_for, search
from modelrepo.measure import run
from modelrepo.session import open_session
from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc
from server.onthefly import RECIPES

JOB_SECONDS = 600  # a whole job, accuracy-aware search included, on 2 busy cores


@pytest.fixture()
def repo(digits_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the session's real build: jobs write into it, the fixture stays as built."""
    return Path(shutil.copytree(digits_repo, tmp_path / "repo", symlinks=True))


def _finish(admin: cpb_grpc.CompressionServiceStub, job_id: str) -> cpb.Job:
    return list(admin.WatchJob(cpb.GetJobRequest(id=job_id), timeout=JOB_SECONDS))[-1]


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _job_child(server: ServerProcess) -> psutil.Process | None:
    for child in psutil.Process(server.process.pid).children():
        try:
            if "server.onthefly" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _frozen_job(server: ServerProcess, repo: Path, name: str) -> tuple[str, psutil.Process]:
    """Start an int8_dynamic job and SIGSTOP its child once the job is RUNNING and the child has
    reported its first step (set up, quantizing), so the job stays mid-flight (staging folder on
    disk) for as long as the test needs, whatever the machine's speed."""
    admin = admin_stub(server)
    for attempt in range(3):  # the child may finish before it is frozen: then try again
        job = admin.CreateVariant(cpb.CreateVariantRequest(
            model=MODEL, name=f"{name}{attempt}", recipe="int8_dynamic", parent="teacher"), timeout=10)
        child = None
        for update in admin.WatchJob(cpb.GetJobRequest(id=job.id), timeout=JOB_SECONDS):
            if update.state == cpb.Job.RUNNING and update.step.startswith("quantizing"):
                child = _job_child(server)
                break
        if child is None:
            continue
        if sigstop(child) and admin.GetJob(cpb.GetJobRequest(id=job.id), timeout=10).state == cpb.Job.RUNNING:
            assert list((repo / MODEL).glob(f".{name}{attempt}.partial-{job.id}")), "job is running without its staging folder"
            return job.id, child
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGCONT)
        _finish(admin, job.id)
    raise AssertionError("could not catch a job while it was running")


def _gone(process: psutil.Process, tries: int = 500) -> bool:
    """Bounded wait for `process` to exit (a zombie left for its new parent to reap counts)."""
    for _ in range(tries):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def test_every_recipe_from_teacher_distilled_and_shared_succeeds_and_serves(repo: Path) -> None:
    """Teacher and distilled with every recipe; `shared` too, whose weights are computed by nodes
    that pre-processing folds into initializers while keeping their (transposed-later) value_info."""
    cases = [(recipe, parent) for recipe in RECIPES for parent in ("teacher", "distilled")]
    cases.append(("int8_dynamic", "shared"))
    server = start_server(repo)
    try:
        admin = admin_stub(server)
        made = []
        for recipe, parent in cases:
            name = f"{parent}-{recipe}"
            job = admin.CreateVariant(cpb.CreateVariantRequest(model=MODEL, name=name, recipe=recipe, parent=parent),
                                      timeout=10)
            final = _finish(admin, job.id)
            assert final.state == cpb.Job.SUCCEEDED, f"{recipe} from {parent}: {final.message}"
            assert final.result.quality["accuracy"] > 0.9, (recipe, parent, dict(final.result.quality))
            made.append(name)
        x, labels = heldout(repo, 64)
        for name in made:  # the new variants answer, and answer well
            assert (infer(server, x, name).argmax(axis=1) == labels).mean() > 0.85, name
        assert_serves(server, repo, made)
        assert not partials(repo)
    finally:
        server.stop()


def test_server_killed_mid_job_restarts_serving_everything_and_sweeps_the_staging(repo: Path) -> None:
    before = sorted(json.loads((repo / MODEL / "manifest.json").read_text())["variants"])
    server = start_server(repo)
    child = None
    try:
        job_id, child = _frozen_job(server, repo, "doomed")
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        # The child was started to die with its server: an orphan would quantize for nobody.
        assert _gone(child), "the job's child outlived its server"
    finally:
        server.stop()
        if child is not None and not _gone(child, tries=1):
            child.kill()
    assert partials(repo), "the killed server left no staging folder: the test proves nothing"

    server = start_server(repo)
    try:
        assert not partials(repo)
        swept = [line for line in server.lines if "removed stale staging folder" in line]
        assert len(swept) == 1 and job_id in swept[0], swept
        manifest = json.loads((repo / MODEL / "manifest.json").read_text())
        assert sorted(manifest["variants"]) == before
        assert not list((repo / MODEL).glob("doomed*"))
        assert_serves(server, repo, before)
        # The repository takes new jobs again, under the killed job's name too.
        admin = admin_stub(server)
        job = admin.CreateVariant(cpb.CreateVariantRequest(model=MODEL, name="doomed0", recipe="int8_dynamic"),
                                  timeout=10)
        assert _finish(admin, job.id).state == cpb.Job.SUCCEEDED
        assert not partials(repo)
    finally:
        server.stop()


def test_job_child_killed_fails_the_job_and_leaves_the_repository_as_it_was(repo: Path) -> None:
    manifest = (repo / MODEL / "manifest.json").read_text()
    server = start_server(repo)
    try:
        job_id, child = _frozen_job(server, repo, "victim")
        child.kill()
        final = _finish(admin_stub(server), job_id)
        assert final.state == cpb.Job.FAILED and "-9" in final.message, final.message
        assert (repo / MODEL / "manifest.json").read_text() == manifest
        assert not partials(repo) and not list((repo / MODEL).glob("victim*"))
        assert_serves(server, repo, sorted(json.loads(manifest)["variants"]))
    finally:
        server.stop()


def test_server_start_removes_only_stale_staging_folders(repo: Path, tmp_path: Path) -> None:
    """Stale: a killed build's folder (pid gone), a killed server's job folder. Kept: a build whose
    pid lives, a job folder another live process holds, look-alikes, symlinks, a build's `.old-`."""
    folder = repo / MODEL
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    dead = _dead_pid()
    stale = [repo / f".{MODEL}.partial-{dead}", folder / ".int8x.partial-0123456789ab"]
    held = folder / ".busy.partial-abcdefabcdef"
    kept = [repo / f".{MODEL}.partial-{os.getpid()}", held, repo / f".{MODEL}.old-{dead}",
            repo / ".cache.partial-notapid", folder / ".x.partial-short", folder / "plain.partial-0123456789ab"]
    for path in stale + kept:
        path.mkdir()
        (path / "model.onnx").write_bytes(b"x")
    links = [repo / f".other.partial-{_dead_pid()}", folder / ".link.partial-00000000beef"]
    for link in links:
        link.symlink_to(outside, target_is_directory=True)
    lock = hold_staging(held)  # as another replica's running job would
    try:
        server = start_server(repo)
        server.stop()
    finally:
        release_staging(lock)
    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept + links if not os.path.lexists(p)] == []
    assert (outside / "precious").read_text() == "keep" and all(link.is_symlink() for link in links)
    swept = [line for line in server.lines if "removed stale staging folder" in line]
    assert len(swept) == len(stale), swept


def test_a_build_removes_stale_staging_of_its_model_only(tmp_path: Path) -> None:
    dead = _dead_pid()
    ours, other = tmp_path / f".{MODEL}.partial-{dead}", tmp_path / f".other.partial-{dead}"
    for path in (ours, other):
        path.mkdir()
    with staged_model_dir(tmp_path, MODEL) as staging:
        (staging / "manifest.json").write_text("{}")
    assert not ours.exists() and other.exists() and (tmp_path / MODEL / "manifest.json").is_file()


def test_dynamic_int8_of_a_transposed_gemm_with_weight_value_info(tmp_path: Path) -> None:
    """The exporter's shape of the digits graphs in small: Gemm(transB=1) whose weight also has a
    value_info entry. Dynamic int8 turns the Gemm into a MatMul on the transposed weight, which
    used to contradict that entry (ShapeInferenceError), with and without pre-processing."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(12, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 12])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(12, np.float32), "b")],
        value_info=[helper.make_tensor_value_info("w", TensorProto.FLOAT, [12, 8])])
    source = tmp_path / "fc.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(source))
    check = {"x": rng.normal(size=(32, 8)).astype(np.float32)}
    reference = run(open_session(source), check)
    for preprocess in (False, True):
        options = QuantizeOptions(mode="dynamic", preprocess=preprocess, min_fidelity=0.9)
        target = tmp_path / f"int8-{preprocess}.onnx"
        result = search(source, target, None, check, reference, budget_for("classification", reference, None, options),
                        options, False)
        assert result.met and result.quantized_nodes == 1, preprocess
        assert any(n.op_type == "MatMulInteger" for n in onnx.load(str(target)).graph.node)
