"""Training recipes through CompressionService on the real digits build: distilled and chains, killed children, a server without the compression extra."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import psutil
import pytest
from digits_jobs import MODEL, admin_stub, assert_serves, heldout, infer, partials
from server_process import ROOT, ServerProcess, start_server

from protos import compression_pb2 as cpb

JOB_SECONDS = 600  # a whole job on 2 busy cores; the jobs here take seconds
EPOCHS = "150"  # the build's own default: about 10 s on the calibration rows here


@pytest.fixture()
def repo(digits_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the session's real build: jobs write into it, the fixture stays as built."""
    return Path(shutil.copytree(digits_repo, tmp_path / "repo", symlinks=True))


def _create(server: ServerProcess, name: str, recipe: str, **params: str) -> cpb.Job:
    return admin_stub(server).CreateVariant(cpb.CreateVariantRequest(
        model=MODEL, name=name, recipe=recipe, parent="teacher", params=params), timeout=10)


def _finish(server: ServerProcess, job_id: str) -> list[cpb.Job]:
    return list(admin_stub(server).WatchJob(cpb.GetJobRequest(id=job_id), timeout=JOB_SECONDS))


def _training_child(server: ServerProcess) -> psutil.Process:
    found = [c for c in psutil.Process(server.process.pid).children() if "compression.onthefly" in c.cmdline()]
    assert len(found) == 1, found
    return found[0]


def test_distilled_and_distilled_int8_jobs_complete_and_serve_without_restart(repo: Path) -> None:
    server = start_server(repo)
    try:
        made = {"kd": "distilled", "kd-int8": "distilled+int8_dynamic"}
        for name, recipe in made.items():
            updates = _finish(server, _create(server, name, recipe, epochs=EPOCHS).id)
            final = updates[-1]
            assert final.state == cpb.Job.SUCCEEDED, f"{recipe}: {final.message}"
            assert final.recipe == recipe and final.percent == 100.0
            # The epochs reported their validation agreement with the teacher; the job keeps the last one.
            assert 0.5 < final.quality["validation_agreement"] <= 1.0, dict(final.quality)
            assert final.result.quality["accuracy"] > 0.85, (recipe, dict(final.result.quality))
        x, labels = heldout(repo)
        for name in made:  # served at once, by the server that made them, and well
            assert (infer(server, x, name).argmax(axis=1) == labels).mean() > 0.85, name
        assert_serves(server, repo, list(made))
        manifest = json.loads((repo / MODEL / "manifest.json").read_text())
        student, chain = manifest["variants"]["kd"], manifest["variants"]["kd-int8"]
        assert student["kind"] == "distilled" and student["recipe"]["name"] == "distill"
        assert student["parameters"] < manifest["variants"]["teacher"]["parameters"] * 0.15
        assert chain["kind"] == "distilled+int8" and [s["step"] for s in chain["recipe"]["params"]["steps"]] == [
            "distilled", "int8_dynamic"]
        ops = {n.op_type for n in onnx.load(str(repo / MODEL / chain["file"])).graph.node}
        assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops, ops
        assert sorted(p.name for p in (repo / MODEL / "kd-int8").iterdir()) == ["model.onnx"]  # no intermediates
        assert not partials(repo)
        # Bad recipes and parameters are refused before anything starts, naming the field.
        for recipe, params, field in (("int8_dynamic+distilled", {}, "recipe"), ("distill", {}, "recipe"),
                                      ("distilled", {"amount": "0.5"}, "params.amount"),
                                      ("distilled+int8_static", {"epochs": "many"}, "params.epochs"),
                                      ("pruned", {"importance": "random"}, "params.importance")):
            with pytest.raises(grpc.RpcError) as err:
                _create(server, "bad", recipe, **params)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details(), err.value.details()
        # An int8 parent is refused up front (ONNX Runtime's quantizer would fail on it with a bare KeyError).
        with pytest.raises(grpc.RpcError) as err:
            admin_stub(server).CreateVariant(cpb.CreateVariantRequest(model=MODEL, name="bad", recipe="int8_static",
                                                                  parent="kd-int8"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "'kd-int8' is already int8" in err.value.details(), err.value.details()
    finally:
        server.stop()


def test_killed_training_job_leaves_the_repository_loadable_and_unchanged(repo: Path) -> None:
    manifest = (repo / MODEL / "manifest.json").read_text()
    listing = sorted(p.name for p in (repo / MODEL).iterdir())
    server = start_server(repo)
    try:
        # Far more epochs than any machine runs before the kill below: the job is surely mid-training.
        job = _create(server, "doomed", "distilled", epochs="1000000")
        stream = admin_stub(server).WatchJob(cpb.GetJobRequest(id=job.id), timeout=JOB_SECONDS)
        for update in stream:
            assert update.state in (cpb.Job.PENDING, cpb.Job.RUNNING), update.message
            if "epoch" in update.step:
                break
        stream.cancel()
        assert list((repo / MODEL).glob(f".doomed.partial-{job.id}")), "training without a staging folder"
        _training_child(server).kill()
        final = _finish(server, job.id)[-1]
        assert final.state == cpb.Job.FAILED and "-9" in final.message, final.message
        assert (repo / MODEL / "manifest.json").read_text() == manifest
        assert sorted(p.name for p in (repo / MODEL).iterdir()) == listing and not partials(repo)
        assert_serves(server, repo, sorted(json.loads(manifest)["variants"]))
    finally:
        server.stop()
    server = start_server(repo)  # and a fresh server loads it as it was
    try:
        assert_serves(server, repo, sorted(json.loads(manifest)["variants"]))
    finally:
        server.stop()


SITECUSTOMIZE = '''"""Hide the compression extra from this interpreter, as an environment without it looks."""
import sys
from importlib.machinery import PathFinder

HIDDEN = ("torch", "torch_pruning")


class _WithoutExtra:
    """The standard path finder, blind to the hidden packages: no module spec, no distribution."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        return None if name.split(".")[0] in HIDDEN else PathFinder.find_spec(name, path, target)

    @staticmethod
    def find_distributions(*args, **kwargs):
        return (d for d in PathFinder.find_distributions(*args, **kwargs)
                if (d.metadata["Name"] or "").lower().replace("-", "_") not in HIDDEN)

    @staticmethod
    def invalidate_caches():
        PathFinder.invalidate_caches()


sys.meta_path[:] = [_WithoutExtra if finder is PathFinder else finder for finder in sys.meta_path]
'''


def test_server_without_the_compression_extra_refuses_training_recipes(repo: Path, tmp_path: Path) -> None:
    hide = tmp_path / "no-torch"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": str(hide)}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env={"PATH": "/usr/bin:/bin", **env}, cwd=ROOT,
                           capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr, probe.stderr  # as if uninstalled
    server = start_server(repo, env=env)
    try:
        for recipe in ("distilled", "pruned+int8_static", "shared"):
            with pytest.raises(grpc.RpcError) as err:
                _create(server, "student", recipe)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, recipe
            assert "compression extra" in err.value.details() and ".[compression]" in err.value.details()
        assert not partials(repo) and not (repo / MODEL / "student").exists()
        # The torch-free recipes still work there.
        final = _finish(server, _create(server, "int8-here", "int8_dynamic").id)[-1]
        assert final.state == cpb.Job.SUCCEEDED, final.message
        assert_serves(server, repo, ["int8-here"])
    finally:
        server.stop()


def test_training_child_reads_data_from_a_file(repo: Path, tmp_path: Path) -> None:
    """`--data FILE.npz` (what a server passes for CreateVariantRequest.data under --job-data-dir): the
    student trains on that file's splits and is measured on the model folder's held-out file."""
    x, y = heldout(repo)
    data = tmp_path / "mine.npz"
    np.savez(data, input=x, y=y)
    out = repo / MODEL / ".mine.partial-0123456789ab"
    done = subprocess.run(
        [sys.executable, "-m", "compression.onthefly", "--model-folder", str(repo / MODEL), "--name", "mine",
         "--recipe", "distilled", "--params", json.dumps({"epochs": "20", "width": "0.25"}), "--data", str(data),
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=JOB_SECONDS)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == "step: started", done.stdout[-2000:]
    entry = json.loads(next(line[8:] for line in lines if line.startswith("result: ")))
    assert entry["file"] == "mine/model.onnx" and entry["recipe"]["params"]["student"]["layer_widths"] == [300, 300, 10]
    assert entry["recipe"]["params"]["epochs"] == 20 and {"accuracy", "agreement"} <= entry["quality"].keys()
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]


def test_onnx_graph_becomes_a_module_with_real_layers(tmp_path: Path) -> None:
    """MatMul + Add of a bias folds into one nn.Linear (what pruning can shrink); the module computes what
    ONNX Runtime does; an op without a torch equivalent is named in a one-line error."""
    from onnx import TensorProto, helper, numpy_helper
    from torch import nn

    from compression.errors import UsageError
    from compression.onnx_module import from_onnx

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b1"),
            numpy_helper.from_array(rng.normal(size=(3, 16)).astype(np.float32), "w2"),
            numpy_helper.from_array(np.array([-1, 16], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Gemm", ["r", "w2"], ["g"], transB=1),
             helper.make_node("Softmax", ["g"], ["y"], axis=1)]
    head = [helper.make_node("MatMul", ["x0", "w1"], ["m"]), helper.make_node("Add", ["m", "b1"], ["a"]),
            helper.make_node("Tanh", ["a"], ["x"])]
    graph = helper.make_graph(head + nodes, "mlp", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], init)
    path = tmp_path / "mlp.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    module = from_onnx(path)
    assert [type(m) for m in module.children()] == [nn.Linear, nn.Linear] and module.fc1.bias is not None
    x = rng.normal(size=(5, 8)).astype(np.float32)
    import torch

    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ort.InferenceSession(str(path)).run(None, {"x0": x})[0], atol=1e-5)

    graph.node.append(helper.make_node("Conv", ["y", "w2"], ["z"], name="conv1"))
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    with pytest.raises(UsageError, match=r"'conv1' \(Conv\).*int8 or shared recipe"):
        from_onnx(path)
