"""TLS, mutual TLS and bearer tokens reject the wrong caller and admit the right one, on a real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from certs import make_ca, make_leaf
from server_process import start_server
from tiny_repository import FEATURES, write_tiny_repository
from tritonclient.utils import InferenceServerException


def _infer(client: triton.InferenceServerClient, headers: dict | None = None) -> np.ndarray:
    x = triton.InferInput("input", [1, FEATURES], "FP32")
    x.set_data_from_numpy(np.ones((1, FEATURES), np.float32))
    return client.infer("tiny", [x], headers=headers, client_timeout=10).as_numpy("logits")


def _status(call) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status()


def test_tokens_guard_inference_and_admin_calls(tmp_path: Path) -> None:
    write_tiny_repository(tmp_path)
    server = start_server(tmp_path, env={"SLIMSERVE_AUTH_TOKEN": "user-secret", "SLIMSERVE_ADMIN_TOKEN": "admin-secret"})
    try:
        client = triton.InferenceServerClient(server.url)
        assert client.is_server_live() and client.is_server_ready()  # probes stay open
        assert _status(lambda: _infer(client)) == "StatusCode.UNAUTHENTICATED"
        assert _status(lambda: _infer(client, {"authorization": "Bearer wrong"})) == "StatusCode.PERMISSION_DENIED"
        assert _infer(client, {"authorization": "Bearer user-secret"}).shape == (1, 3)
        # Repository calls need the admin token; the user token is not enough.
        user = {"authorization": "Bearer user-secret"}
        assert _status(lambda: client.get_model_repository_index(headers=user)) == "StatusCode.PERMISSION_DENIED"
        assert _status(lambda: client.unload_model("tiny", headers=user)) == "StatusCode.PERMISSION_DENIED"
        admin = {"authorization": "Bearer admin-secret"}
        assert client.get_model_repository_index(headers=admin).models
        assert _infer(client, admin).shape == (1, 3)
        assert "slimserve_requests_total" in server.metrics()  # metrics stay open
    finally:
        server.stop()


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_tiny_repository(repo)
    ca, ca_name, ca_key = make_ca(tmp_path, "ca")
    server_pem = make_leaf(tmp_path, "server", ca_name, ca_key, server=True)
    client_pem = make_leaf(tmp_path, "client", ca_name, ca_key, server=False)
    rogue_ca, rogue_name, rogue_key = make_ca(tmp_path, "rogue-ca")
    rogue_pem = make_leaf(tmp_path, "rogue", rogue_name, rogue_key, server=False)

    server = start_server(repo, "--tls-cert", str(server_pem.cert), "--tls-key", str(server_pem.key))
    try:
        secure = triton.InferenceServerClient(server.url, ssl=True, root_certificates=str(ca.cert))
        assert _infer(secure).shape == (1, 3)
        plain = triton.InferenceServerClient(server.url)
        assert _status(lambda: _infer(plain)) == "StatusCode.UNAVAILABLE"
    finally:
        server.stop()

    server = start_server(repo, "--tls-cert", str(server_pem.cert), "--tls-key", str(server_pem.key),
                          "--tls-client-ca", str(ca.cert))
    try:
        trusted = triton.InferenceServerClient(
            server.url, ssl=True, root_certificates=str(ca.cert),
            private_key=str(client_pem.key), certificate_chain=str(client_pem.cert),
        )
        assert _infer(trusted).shape == (1, 3)
        anonymous = triton.InferenceServerClient(server.url, ssl=True, root_certificates=str(ca.cert))
        assert _status(lambda: _infer(anonymous)) == "StatusCode.UNAVAILABLE"
        rogue = triton.InferenceServerClient(
            server.url, ssl=True, root_certificates=str(ca.cert),
            private_key=str(rogue_pem.key), certificate_chain=str(rogue_pem.cert),
        )
        assert _status(lambda: _infer(rogue)) == "StatusCode.UNAVAILABLE"
    finally:
        server.stop()
