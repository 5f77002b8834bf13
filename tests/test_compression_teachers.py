"""Every teacher format and data format `compression.build` accepts, each built small, in-process.

Teachers (tests/tiny_teachers.py): a scripted TorchScript MLP (.pt), a traced TorchScript CNN
(.ts), a torch.export CNN (.pt2), a factory module with safetensors or a state dict, an ONNX file
with external data; data: .npz with and without y, Dataset factories with and without labels.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_teachers import MODULE, write_tiny_teachers  # noqa: E402

from compression.build import main  # noqa: E402

# Few epochs: these tests check the mechanics; quality targets are the digits build's job.
FAST = ["--quiet", "--distill-epochs", "6", "--prune-finetune-epochs", "3",
        "--int8-calibration-samples", "64"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_tiny_teachers(tmp_path_factory.mktemp("tiny_teachers"))
    sys.path.insert(0, str(root))  # the factories must be importable, as on a user's PYTHONPATH
    yield root
    sys.path.remove(str(root))
    sys.modules.pop(MODULE, None)


def build(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, Path]:
    out = tmp_path / "repo"
    status = main(["--out", str(out), *FAST, *args])
    return status, capsys.readouterr().err, out


def manifest_of(out: Path) -> tuple[Path, dict]:
    (folder,) = [p for p in out.iterdir()]
    return folder, json.loads((folder / "manifest.json").read_text())


def check_files(folder: Path, manifest: dict) -> None:
    for variant in manifest["variants"].values():
        data = (folder / variant["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == variant["sha256"]
        assert len(data) == variant["bytes"]
    assert not list(folder.rglob("*.data"))  # weights inside the files
    assert {"report.md", "chart.png", "heldout.npz", "calibration.npz"} <= {p.name for p in folder.iterdir()}
    from modelrepo.schema import validate
    assert validate(manifest) == []


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}


def test_torchscript_mlp_with_labelled_npz(tiny: Path, tmp_path: Path, capsys) -> None:
    status, err, out = build(tmp_path, capsys, "--teacher", str(tiny / "mlp.pt"),
                             "--data", str(tiny / "digits.npz"), "--variants", "distilled,pruned,int8")
    assert status == 0, err
    folder, m = manifest_of(out)
    assert folder.name == "mlp"
    check_files(folder, m)
    # Names come from the teacher (forward's argument), the shape from the data, batch dynamic.
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert m["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    assert m["task"] == "classification" and m["primary_metric"] == "accuracy"
    assert m["data"]["source"] == "npz" and m["data"]["labelled"] is True
    assert m["variants"]["teacher"]["recipe"]["params"]["format"] == "torchscript"
    # The exported teacher computes what the TorchScript file computes.
    held = np.load(folder / "heldout.npz")
    scripted = torch.jit.load(str(tiny / "mlp.pt"))
    want = scripted(torch.from_numpy(held["x"])).detach().numpy()
    got = session(folder / "teacher/model.onnx").run(None, {"x": held["x"]})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert m["variants"]["teacher"]["quality"]["accuracy"] >= 0.9
    before, after = shapes(folder / "teacher/model.onnx"), shapes(folder / "pruned/model.onnx")
    assert before["fc1.weight"] == (48, 64) and after["fc1.weight"] == (24, 64)
    assert after["out.weight"] == (10, 24)
    int8 = m["variants"]["int8"]["recipe"]["params"]
    assert int8["mode"] == "static" and int8["budget"]["metric"] == "accuracy"
    assert int8["budget"]["max_drop_points"] == 1.0 and "fp32_nodes" in int8
    assert int8["checked_on"]["int8_features"] == m["host"]["int8_features"]


def test_traced_torchscript_cnn_with_a_dataset_factory(tiny: Path, tmp_path: Path, capsys) -> None:
    status, err, out = build(tmp_path, capsys, "--teacher", str(tiny / "cnn.ts"),
                             "--data", f"{MODULE}:images", "--variants", "pruned+int8")
    assert status == 0, err
    folder, m = manifest_of(out)
    check_files(folder, m)
    assert m["inputs"][0]["shape"] == [-1, 1, 8, 8]
    assert m["data"]["source"] == "factory" and m["data"]["splits"]["train"] == 360
    v = m["variants"]
    assert v["pruned+int8"]["parent"] == "pruned" and v["pruned"]["parent"] == "teacher"
    params = v["pruned"]["recipe"]["params"]
    assert params["widths_before"] == {"conv1": 16, "conv2": 32}
    assert params["widths_after"] == {"conv1": 8, "conv2": 16}
    assert params["ignored_layers"] == ["fc"]
    assert params["macs_after"] < 0.5 * params["macs_before"] == 0.5 * v["teacher"]["macs"]
    assert {"batch_1_p50_ms", "batch_32_p50_ms"} <= params["latency_before"].keys()
    assert params["latency_after"]["batch_1_p50_ms"] == v["pruned"]["latency"]["batch_1"]["p50_ms"]
    assert v["pruned+int8"]["macs"] == v["pruned"]["macs"]
    assert shapes(folder / "pruned/model.onnx")["fc.weight"] == (10, 16)


def test_exported_program_cnn_derived_student_and_shared(tiny: Path, tmp_path: Path, capsys) -> None:
    status, err, out = build(tmp_path, capsys, "--teacher", str(tiny / "cnn.pt2"),
                             "--data", str(tiny / "images.npz"), "--variants", "distilled,shared",
                             "--student-width", "0.5", "--shared-min-elements", "100", "--shared-bits", "6",
                             "--name", "cnn-export")
    assert status == 0, err
    folder, m = manifest_of(out)
    assert folder.name == "cnn-export"
    check_files(folder, m)
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    student = m["variants"]["distilled"]["recipe"]["params"]["student"]
    assert student["width"] == 0.5 and student["layer_widths"] == [8, 16, 10]
    assert "student_without_teacher" in m["baselines"]
    assert m["baselines"]["student_without_teacher"]["parameters"] == m["variants"]["distilled"]["parameters"]
    shared = m["variants"]["shared"]
    assert shared["bytes"] < m["variants"]["teacher"]["bytes"]
    assert shared["parameters"] == m["variants"]["teacher"]["parameters"]
    assert "storage only" in shared["recipe"]["params"]["saves"]
    assert shared["quality"]["agreement"] >= 0.9


def test_factory_with_safetensors_and_unlabelled_npz_is_an_embedding(tiny: Path, tmp_path: Path,
                                                                     capsys) -> None:
    status, err, out = build(tmp_path, capsys, "--teacher", f"{MODULE}:make_mlp",
                             "--weights", str(tiny / "mlp.safetensors"),
                             "--data", str(tiny / "digits_unlabelled.npz"),
                             "--variants", "distilled+int8")
    assert status == 0, err
    folder, m = manifest_of(out)
    check_files(folder, m)
    assert m["task"] == "embedding" and m["primary_metric"] == "cosine_mean"
    assert "labels" not in m and m["data"]["labelled"] is False
    assert "y" not in np.load(folder / "heldout.npz").files
    for variant in m["variants"].values():
        assert {"cosine_mean", "cosine_min", "neighbour_agreement"} <= variant["quality"].keys()
    assert m["variants"]["teacher"]["quality"]["cosine_mean"] == pytest.approx(1.0)
    recipe = m["variants"]["distilled"]["recipe"]["params"]
    assert recipe["loss"] == "mean(1-cos(s,t))"
    assert m["variants"]["distilled+int8"]["recipe"]["params"]["budget"] == {
        "metric": "cosine_mean", "min_value": 0.99, "split": "validation", "against": "the fp32 parent",
        "parent_value": 1.0}
    assert m["variants"]["teacher"]["recipe"]["params"]["weights"] == "mlp.safetensors"


def test_unlabelled_dataset_factory_as_a_classifier(tiny: Path, tmp_path: Path, capsys) -> None:
    status, err, out = build(tmp_path, capsys, "--teacher", f"{MODULE}:make_mlp",
                             "--weights", str(tiny / "mlp.pth"), "--data", f"{MODULE}:unlabelled",
                             "--task", "classification", "--variants", "int8")
    assert status == 0, err
    folder, m = manifest_of(out)
    check_files(folder, m)
    assert m["task"] == "classification" and m["primary_metric"] == "agreement"
    for variant in m["variants"].values():
        assert "accuracy" not in variant["quality"] and "agreement" in variant["quality"]
    budget = m["variants"]["int8"]["recipe"]["params"]["budget"]
    assert budget["metric"] == "agreement" and budget["min_value"] == 0.99


def test_factory_file_and_state_dict_with_a_user_student(tiny: Path, tmp_path: Path, capsys) -> None:
    status, err, out = build(tmp_path, capsys, "--teacher", f"{tiny / 'tinymodels.py'}:make_mlp",
                             "--weights", str(tiny / "mlp.pth"), "--data", str(tiny / "digits.npz"),
                             "--student", f"{MODULE}:small_student", "--variants", "distilled",
                             "--name", "mlp")
    assert status == 0, err
    folder, m = manifest_of(out)
    student = m["variants"]["distilled"]["recipe"]["params"]["student"]
    assert student["source"] == "factory" and student["layer_widths"] == [16, 16, 10]
    assert shapes(folder / "distilled/model.onnx")["fc1.weight"] == (16, 64)
    assert m["variants"]["teacher"]["quality"]["accuracy"] >= 0.9  # the state dict was loaded


def test_onnx_teacher_dynamic_int8_and_shared(tiny: Path, tmp_path: Path, capsys) -> None:
    status, err, out = build(tmp_path, capsys, "--teacher", str(tiny / "mlp.onnx"),
                             "--data", str(tiny / "digits.npz"), "--variants", "int8,shared",
                             "--int8-mode", "dynamic", "--shared-min-elements", "1000")
    assert status == 0, err
    folder, m = manifest_of(out)
    check_files(folder, m)  # the external-data file was folded into the teacher
    assert m["inputs"][0]["name"] == "pixels" and m["outputs"][0]["name"] == "scores"
    assert m["variants"]["teacher"]["recipe"]["params"]["format"] == "onnx"
    assert m["variants"]["teacher"]["macs"] == 64 * 48 + 48 * 48 + 48 * 10
    ops = {n.op_type for n in onnx.load(str(folder / "int8/model.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    assert m["variants"]["int8"]["recipe"]["params"]["mode"] == "dynamic"
    assert m["variants"]["int8"]["parameters"] == m["variants"]["teacher"]["parameters"]
    assert m["variants"]["shared"]["bytes"] < m["variants"]["teacher"]["bytes"]
    assert m["variants"]["int8"]["quality"]["accuracy"] >= m["variants"]["teacher"]["quality"]["accuracy"] - 0.02


def test_name_flags_and_tight_fidelity_budget_keep_nodes_in_fp32(tiny: Path, tmp_path: Path,
                                                                 capsys) -> None:
    status, err, out = build(tmp_path, capsys, "--teacher", str(tiny / "embedder.pt"),
                             "--data", str(tiny / "digits.npz"), "--task", "embedding",
                             "--input-name", "pixels", "--output-name", "embedding",
                             "--variants", "int8", "--int8-min-fidelity", "0.999999")
    assert status == 0, err
    folder, m = manifest_of(out)
    assert m["inputs"][0]["name"] == "pixels" and m["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 16]}]
    sess = session(folder / "int8/model.onnx")
    assert [i.name for i in sess.get_inputs()] == ["pixels"]
    params = m["variants"]["int8"]["recipe"]["params"]
    assert params["attempts"][0]["met"] is False and params["budget_met"] is True
    assert params["fp32_nodes"] and len(params["sensitivity"]) == 2
    model = onnx.load(str(folder / "int8/model.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in params["fp32_nodes"]:  # its weight is no longer dequantized int8
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                       for i in node.input[1:])


def bad(tiny: Path, tmp_path: Path, capsys, *args: str) -> str:
    status, err, out = build(tmp_path, capsys, *args)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing half-written, not even the repository root
    return lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["--teacher", "{t}/missing.pt", "--data", "{t}/digits.npz"], "teacher file not found"),
    (["--teacher", "{t}/garbage.pt", "--data", "{t}/digits.npz"], "not a TorchScript file"),
    (["--teacher", "{t}/mlp.pt"], "--data is required"),
    (["--teacher", "{t}/mlp.pt", "--data", "{t}/narrow.npz"], "shape mismatch"),
    (["--teacher", "{t}/cnn.pt2", "--data", "{t}/digits.npz"], "shape mismatch"),
    (["--teacher", "{t}/mlp.onnx", "--data", "{t}/narrow.npz"], "shape mismatch"),
    (["--teacher", "{t}/mlp.onnx", "--data", "{t}/digits.npz", "--variants", "pruned"], "needs training"),
    (["--teacher", "{t}/mlp.onnx", "--data", "{t}/digits.npz", "--variants", "distilled+int8"],
     "needs training"),
    (["--teacher", "{t}/mlp.pt", "--data", "{t}/missing.npz"], "data file not found"),
    (["--teacher", "{t}/mlp.pt", "--data", "{t}/garbage.npz"], "not a readable .npz"),
    (["--teacher", "{t}/mlp.pt", "--data", "{t}/no_x.npz"], "no input arrays"),
    (["--teacher", "{t}/mlp.pt", "--data", f"{MODULE}:broken"], "no data today"),
    (["--teacher", "{t}/mlp.pt", "--data", "no_such_module:data"], "cannot import"),
    (["--teacher", "{t}/mlp.pt", "--weights", "{t}/mlp.pth", "--data", "{t}/digits.npz"],
     "--weights goes with a factory"),
    (["--teacher", f"{MODULE}:make_mlp", "--weights", "{t}/wrong.pth", "--data", "{t}/digits.npz"],
     "do not fit"),
    (["--teacher", f"{MODULE}:nothing", "--data", "{t}/digits.npz"], "has no attribute"),
    (["--teacher", "{t}/mlp.pt", "--data", "{t}/digits.npz", "--variants", "distilled",
      "--student", f"{MODULE}:wrong_student"], "the student outputs"),
    (["--teacher", "{t}/embedder.pt", "--data", "{t}/digits.npz", "--task", "embedding",
      "--variants", "distilled", "--distill-loss", "kd"], "needs a classifier"),
    (["--data", "{t}/narrow.npz"], "digits teacher"),
    (["--teacher", "{t}/mlp.pt", "--data", "{t}/digits.npz", "--variants", "distilled",
      "--student-hidden", "8,8"], "student family"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny: Path, tmp_path: Path, capsys,
                                                         args: list[str], fragment: str) -> None:
    line = bad(tiny, tmp_path, capsys, *(a.replace("{t}", str(tiny)) for a in args))
    assert fragment in line


def test_a_registered_teacher_with_a_loader_goes_through_the_build(
        tiny: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from compression import teachers
    from modelrepo.records import TensorSpec

    def load(splits, options, progress):
        import tinymodels

        from compression.data import bind_inputs

        module = tinymodels.MLP()
        module.load_state_dict(torch.load(tiny / "mlp.pth", weights_only=True))
        return teachers.Teacher("registered", module, "classification",
                                (TensorSpec("input", "FP32", (-1, 64)),),
                                (TensorSpec("logits", "FP32", (-1, 10)),), splits.labels,
                                {"name": "load", "params": {}}), bind_inputs(splits, ["input"], "registered")

    source = teachers.TeacherSource("registered", str(tiny / "digits.npz"), load)
    monkeypatch.setitem(teachers.BUILTIN_TEACHERS, "registered", source)
    status, err, out = build(tmp_path, capsys, "--teacher", "registered", "--variants", "int8")
    assert status == 0, err
    folder, m = manifest_of(out)
    assert folder.name == "registered" and m["inputs"][0]["name"] == "input"
    assert m["data"]["name"].endswith("digits.npz")  # the teacher's own data set by default
    assert m["variants"]["teacher"]["quality"]["accuracy"] >= 0.9
