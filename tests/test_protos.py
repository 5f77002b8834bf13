"""The checked-in generated protos are fresh, and wire-compatible with tritonclient's own descriptors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Prints {message: {field: [number, type, repeated]}} for a module's messages, in a clean process
# (our `inference` package and tritonclient's would collide in one descriptor pool).
DUMP = r"""
import json, sys, importlib
mod = importlib.import_module(sys.argv[1])
out = {}
def walk(d, prefix=""):
    name = prefix + d.name
    out[name] = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
    for n in d.nested_types:
        if not n.GetOptions().map_entry:
            walk(n, name + ".")
for d in mod.DESCRIPTOR.message_types_by_name.values():
    walk(d)
print(json.dumps(out))
"""


def _descriptors(module: str) -> dict:
    done = subprocess.run([sys.executable, "-c", DUMP, module], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    for rel in generated:
        checked_in = ROOT / rel
        assert checked_in.exists(), f"{rel} is generated but not checked in; run python protos/generate.py"
        assert checked_in.read_text() == (tmp_path / rel).read_text(), (
            f"{rel} is stale; run python protos/generate.py and commit the result"
        )


def test_every_field_matches_tritonclient() -> None:
    ours = _descriptors("protos.inference_pb2")
    theirs = {**_descriptors("tritonclient.grpc.service_pb2"), **_descriptors("tritonclient.grpc.model_config_pb2")}
    assert "ModelInferRequest" in ours and "ModelInferRequest.InferInputTensor" in ours
    for message, fields in ours.items():
        assert message in theirs, f"{message} is not a message of the KServe/Triton protocol"
        for name, spec in fields.items():
            assert theirs[message].get(name) == spec, f"{message}.{name}: ours {spec}, tritonclient {theirs[message].get(name)}"


def test_service_methods_match_tritonclient() -> None:
    script = (
        "import sys, importlib, json; m = importlib.import_module(sys.argv[1]); "
        "s = m.DESCRIPTOR.services_by_name['GRPCInferenceService']; "
        "print(json.dumps({x.name: [x.input_type.name, x.output_type.name] for x in s.methods}))"
    )
    run = lambda mod: json.loads(  # noqa: E731
        subprocess.run([sys.executable, "-c", script, mod], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    )
    ours, theirs = run("protos.inference_pb2"), run("tritonclient.grpc.service_pb2")
    for method, types in ours.items():
        assert theirs.get(method) == types, method
