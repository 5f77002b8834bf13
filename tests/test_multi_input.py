"""A teacher with two named inputs, end to end: TorchScript `forward(x1, x2)` and an .npz of x1, x2, y
are built into int8, distilled, pruned and distilled+int8, and each variant serves inputs x1 and x2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_process import start_server  # noqa: E402
from tiny_teachers import MODULE, write_tiny_teachers  # noqa: E402

from compression.build import main  # noqa: E402
from modelrepo.schema import validate  # noqa: E402

VARIANTS = "int8,distilled,pruned,distilled+int8"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = write_tiny_teachers(tmp_path_factory.mktemp("tiny"))
    out = tmp_path_factory.mktemp("repo")
    status = main(["--quiet", "--out", str(out), "--teacher", str(tiny / "two.pt"), "--data",
                   str(tiny / "two.npz"), "--variants", VARIANTS, "--distill-epochs", "150",
                   "--prune-finetune-epochs", "10", "--int8-calibration-samples", "64",
                   "--latency-runs", "5,5"])
    sys.modules.pop(MODULE, None)
    assert status == 0
    return out


def test_manifest_names_both_inputs_and_validates(repo: Path) -> None:
    manifest = json.loads((repo / "two" / "manifest.json").read_text())
    assert validate(manifest) == []
    assert [(t["name"], t["shape"]) for t in manifest["inputs"]] == [("x1", [-1, 32]), ("x2", [-1, 32])]
    assert set(manifest["variants"]) == {"teacher", *VARIANTS.split(",")}
    held = np.load(repo / "two" / "heldout.npz")
    assert {"x1", "x2", "y"} == set(held.files)
    calibration = np.load(repo / "two" / "calibration.npz")
    assert {"x1", "x2"} == set(calibration.files) and len(calibration["x1"]) == 64
    for name, entry in manifest["variants"].items():
        session = ort.InferenceSession(str(repo / "two" / entry["file"]), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["x1", "x2"], name
        assert entry["quality"]["accuracy"] > 0.5, name  # a trained digit classifier, not noise
    pruned = manifest["variants"]["pruned"]
    assert pruned["parameters"] < manifest["variants"]["teacher"]["parameters"]


def test_every_variant_serves_inputs_x1_and_x2(repo: Path) -> None:
    manifest = json.loads((repo / "two" / "manifest.json").read_text())
    held = np.load(repo / "two" / "heldout.npz")
    x1, x2 = held["x1"][:8], held["x2"][:8]
    server = start_server(repo)
    try:
        client = triton.InferenceServerClient(server.url)
        meta = client.get_model_metadata("two")
        assert [i.name for i in meta.inputs] == ["x1", "x2"]
        for name, entry in manifest["variants"].items():
            inputs = []
            for key, array in (("x1", x1), ("x2", x2)):
                tensor = triton.InferInput(key, list(array.shape), "FP32")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            got = client.infer("two", inputs, model_version=name).as_numpy("output")
            session = ort.InferenceSession(str(repo / "two" / entry["file"]), providers=["CPUExecutionProvider"])
            want = session.run(None, {"x1": x1, "x2": x2})[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
        # One input missing: a clear INVALID_ARGUMENT naming it, not a crash.
        only = triton.InferInput("x1", list(x1.shape), "FP32")
        only.set_data_from_numpy(x1)
        with pytest.raises(triton.InferenceServerException, match="x2"):
            client.infer("two", [only])
    finally:
        server.stop()
