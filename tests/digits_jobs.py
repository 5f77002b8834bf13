"""What the CompressionService job tests on the real digits build share: the admin stub, held-out rows,
inference, staging folders left behind, and the check that variants serve as their files do."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
from server_process import ServerProcess

from modelrepo.arrays import read_feeds
from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc

MODEL = "digits"


def admin_stub(server: ServerProcess) -> cpb_grpc.CompressionServiceStub:
    return cpb_grpc.CompressionServiceStub(grpc.insecure_channel(server.url))


def heldout(repo: Path, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The build's held-out rows and labels (the first `rows` of them, or all)."""
    feeds, labels = read_feeds(repo / MODEL / "heldout.npz", ["input"])
    return feeds["input"][:rows].astype(np.float32), labels[:rows]


def infer(server: ServerProcess, x: np.ndarray, variant: str) -> np.ndarray:
    """`variant`'s logits for the rows of `x`, sent 64 rows a request (the server's default --max-batch-size)."""
    client = triton.InferenceServerClient(server.url)
    parts = []
    for start in range(0, len(x), 64):
        tensor = triton.InferInput("input", [len(x[start:start + 64]), x.shape[1]], "FP32")
        tensor.set_data_from_numpy(x[start:start + 64])
        parts.append(client.infer(MODEL, [tensor], model_version=variant).as_numpy("logits"))
    return np.concatenate(parts)


def partials(repo: Path) -> list[Path]:
    """Staging folders a job (or a killed server) left in the repository or the model folder."""
    return sorted(repo.glob(".*.partial-*")) + sorted((repo / MODEL).glob(".*.partial-*"))


def assert_serves(server: ServerProcess, repo: Path, names: list[str]) -> None:
    """Each variant is listed as loaded and answers 64 held-out rows as its file does under ONNX Runtime."""
    x = heldout(repo, 64)[0]
    listed = {v.name: v for v in admin_stub(server).ListVariants(cpb.ListVariantsRequest(model=MODEL), timeout=30).variants}
    manifest = json.loads((repo / MODEL / "manifest.json").read_text())
    for name in names:
        assert listed[name].loaded, name
        expected = ort.InferenceSession(str(repo / MODEL / manifest["variants"][name]["file"])).run(None, {"input": x})[0]
        np.testing.assert_allclose(infer(server, x, name), expected, atol=1e-4, err_msg=name)
