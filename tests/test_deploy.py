"""deploy/ renders with kustomize, passes Kubernetes schema validation, and configures real settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from server_process import ROOT

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "all.yaml"
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out.write_text(done.stdout)
    return out


def test_manifests_pass_schema_validation(rendered: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0", str(rendered)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered.read_text())}
    assert {"Deployment", "Service", "Job", "PersistentVolumeClaim", "ConfigMap", "Namespace"} <= kinds


def test_config_names_real_server_settings(rendered: Path) -> None:
    from server.settings import ENV_PREFIX, Settings, parse_settings

    config = next(d for d in yaml.safe_load_all(rendered.read_text()) if d["kind"] == "ConfigMap")
    fields = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    assert set(config["data"]) <= fields, set(config["data"]) - fields
    settings = parse_settings([], environ=config["data"])  # the values parse and validate
    assert settings.grpc_port == 8001 and settings.metrics_port == 8002
    assert settings.host == "0.0.0.0"  # the server's default is loopback, which no Service or probe reaches
