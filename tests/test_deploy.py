"""deploy/: every overlay renders with kustomize and passes schema validation, the objects fit together,
and the real server runs with exactly the command, environment, ports, files and probes of the rendered
pods (moved onto loopback ports and temporary folders), answering each probe as the kubelet asks it.

What this cannot show: no image is built (no Docker engine here) and nothing is applied to a cluster.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from server_process import READY, ROOT, _drain
from tiny_repository import FEATURES, write_tiny_repository

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")

DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "production", "kserve", "distributed-build", "distributed-build-pytorchjob")
K8S_VERSION = "1.30.0"
# Custom resources: no Kubernetes schema for them in kubernetes-validate.
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")
INFERENCE_SERVICE = ("serving.kserve.io/v1beta1", "InferenceService")
PYTORCH_JOB = ("kubeflow.org/v1", "PyTorchJob")
CUSTOM = {SERVICE_MONITOR, INFERENCE_SERVICE, PYTORCH_JOB}
# Test values for the Secrets the user creates (never in the repository).
SECRET_VALUES = {("slimserve-tokens", "auth-token"): "test-auth-token",
                 ("slimserve-tokens", "admin-token"): "test-admin-token"}
TLS_SECRET = "slimserve-tls"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
ADAPTER_VALUES = DEPLOY / "components" / "queue-time-autoscaling" / "prometheus-adapter-values.yaml"


# ---- rendering ----

def kustomize(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS}


def kind_of(doc: dict) -> tuple[str, str]:
    return doc["apiVersion"], doc["kind"]


def all_of(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in all_of(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels only: these manifests use no matchExpressions) against labels."""
    assert set(selector) <= {"matchLabels"}, selector
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def server_pod(docs: list[dict]) -> tuple[dict, dict]:
    """(pod spec, server container) of the Deployment, or of the InferenceService's predictor."""
    isvc = [d for d in docs if kind_of(d) == INFERENCE_SERVICE]
    if isvc:
        spec = isvc[0]["spec"]["predictor"]
        return spec, spec["containers"][0]
    spec = one(docs, "Deployment", "slimserve")["spec"]["template"]["spec"]
    return spec, next(c for c in spec["containers"] if c["name"] == "server")


def claim_mount(spec: dict, container: dict, claim: str = "slimserve-models") -> dict:
    """The container's volumeMount of the repository claim."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = [m for m in container.get("volumeMounts", [])
              if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == claim]
    assert len(mounts) == 1, container.get("volumeMounts")
    return mounts[0]


# ---- schemas ----

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_core_objects_pass_strict_schema_validation(
        overlay: str, rendered: dict, tmp_path: Path) -> None:
    docs = rendered[overlay]
    core = [d for d in docs if kind_of(d) not in CUSTOM]
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, str(path)],
        capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Couldn't find schema" not in output, output
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "PersistentVolumeClaim", "ConfigMap"} <= kinds
    assert "Secret" not in kinds  # secret values are created by the user, never rendered from the repository
    assert all(d["metadata"].get("namespace") == "slimserve" for d in docs if d["kind"] != "Namespace")


def test_deploy_root_still_applies_the_production_overlay(rendered: dict) -> None:
    """`kubectl apply -k deploy/` keeps working: it is the production overlay."""
    assert kustomize(DEPLOY) == rendered["production"]


def test_expected_objects_per_overlay(rendered: dict) -> None:
    def kinds(name: str) -> set[str]:
        return {d["kind"] for d in rendered[name]}
    assert {"Deployment", "Service", "Job"} <= kinds("dev")
    assert not kinds("dev") & {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"}
    assert {"Deployment", "Service", "Job", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ServiceMonitor"} <= kinds("production")
    assert "InferenceService" in kinds("kserve") and not kinds("kserve") & {"Deployment", "Service"}
    assert {"Job", "Service", "Deployment"} <= kinds("distributed-build")
    assert "PyTorchJob" in kinds("distributed-build-pytorchjob") and "Job" not in kinds("distributed-build-pytorchjob")


def test_service_monitor_passes_the_prometheus_operator_schema(rendered: dict) -> None:
    """Validated with pydantic models generated from the Prometheus Operator's CRD (PyPI:
    cloudcoil-models-prometheus-operator): types, enums and patterns; a field the CRD does not know
    would be dropped by the model, so the object must come back unchanged."""
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    for overlay in ("production", "distributed-build", "distributed-build-pytorchjob"):
        doc = one(rendered[overlay], "ServiceMonitor")
        model = ServiceMonitor.model_validate(doc)
        assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc
        assert doc["spec"]["selector"]["matchLabels"] and doc["spec"]["endpoints"]
        assert all(e.get("port") for e in doc["spec"]["endpoints"])


def _crd_schemas(folder: Path) -> dict[tuple[str, str], dict]:
    def strict(node: Any) -> Any:  # as the API server's strict field validation: unknown fields refused
        if isinstance(node, list):
            return [strict(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = {k: strict(v) for k, v in node.items() if k != "description"}
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node

    schemas = {}
    for path in sorted(folder.glob("*.y*ml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {"type": "object"}
                schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = schema
    return schemas


@pytest.mark.skipif(not os.environ.get("SLIMSERVE_CRD_SCHEMAS"),
                    reason="set SLIMSERVE_CRD_SCHEMAS to a folder of the CRDs' YAML (KServe, Prometheus Operator, "
                           "Kubeflow Training Operator releases) to validate the custom objects against them")
def test_custom_objects_pass_their_crd_schemas(rendered: dict) -> None:
    import jsonschema

    schemas = _crd_schemas(Path(os.environ["SLIMSERVE_CRD_SCHEMAS"]))
    checked = set()
    for docs in rendered.values():
        for doc in docs:
            if kind_of(doc) in CUSTOM:
                errors = [f"{list(e.absolute_path)}: {e.message}"
                          for e in jsonschema.Draft7Validator(schemas[kind_of(doc)]).iter_errors(doc)]
                assert errors == [], (kind_of(doc), errors)
                checked.add(kind_of(doc))
    assert checked == CUSTOM


# ---- settings ----

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_names_real_server_settings(overlay: str, rendered: dict) -> None:
    from server.settings import ENV_PREFIX, Settings, parse_settings

    docs = rendered[overlay]
    config = one(docs, "ConfigMap", "slimserve-config")
    fields = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    assert set(config["data"]) <= fields, set(config["data"]) - fields
    settings = parse_settings([], environ=config["data"])  # the values parse and validate
    assert settings.grpc_port == 8001 and settings.metrics_port == 8002
    assert settings.host == "0.0.0.0"  # the server's default is loopback, which no Service or probe reaches
    assert settings.poll_seconds > 0  # every replica picks up variants another one wrote
    if any(d["kind"] in ("Deployment", "InferenceService") for d in docs):
        _, container = server_pod(docs)
        named = {e["name"] for e in container.get("env", []) if e["name"].startswith(ENV_PREFIX)}
        assert named <= fields, named - fields


def test_dashboard_config_map_for_the_grafana_sidecar(rendered: dict) -> None:
    for overlay, docs in rendered.items():
        dashboard = one(docs, "ConfigMap", "slimserve-dashboard")  # no hash suffix: a stable name
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1", overlay
        assert list(dashboard["data"]) == ["slimserve.json"]
        assert isinstance(json.loads(dashboard["data"]["slimserve.json"]), dict)
        # Client-side `kubectl apply` copies the object into an annotation, which is capped at 256 KiB.
        assert len(dashboard["data"]["slimserve.json"].encode()) < 200 * 1024


# ---- production ----

def test_production_invariants(rendered: dict) -> None:
    docs = rendered["production"]
    deployment = one(docs, "Deployment", "slimserve")
    spec, container = server_pod(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], pod_labels)

    # Replicas: the HPA owns the count (minReplicas >= 2); a replicas field would fight it on each apply.
    hpa = one(docs, "HorizontalPodAutoscaler", "slimserve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert deployment["spec"].get("replicas", hpa["spec"]["minReplicas"]) >= 2 and hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "slimserve"}
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    assert "cpu" in container["resources"]["requests"]  # utilization is measured against the request

    pdb = one(docs, "PodDisruptionBudget", "slimserve")
    assert selects(pdb["spec"]["selector"], pod_labels)
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]

    service = one(docs, "Service", "slimserve")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert all(p["targetPort"] in container_ports for p in service_ports.values())
    monitor = one(docs, "ServiceMonitor", "slimserve")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint.get("path", "/metrics") == "/metrics"
    assert service_ports[monitor["spec"]["endpoints"][0]["port"]]["targetPort"] == "metrics"

    # The repository: writable mount of a ReadWriteMany claim; servers poll it.
    mount = claim_mount(spec, container)
    assert not mount.get("readOnly")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert not volume["persistentVolumeClaim"].get("readOnly")
    claim = one(docs, "PersistentVolumeClaim", "slimserve-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]

    spread = spec["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    assert all(selects(c["labelSelector"], pod_labels) for c in spread)

    # Sizing: 2 cores, memory limit above the request; no CPU limit (throttling).
    resources = container["resources"]
    assert resources["requests"]["cpu"] == "2" and "cpu" not in resources.get("limits", {})
    assert resources["limits"]["memory"] == "1Gi" and resources["requests"]["memory"] == "512Mi"

    # TLS on, so no kubelet gRPC probe (plaintext only): every probe is the exec TLS health check.
    env = {e["name"]: e for e in container["env"]}
    assert {"SLIMSERVE_TLS_CERT", "SLIMSERVE_TLS_KEY"} <= set(env)
    for name in PROBES:
        assert "exec" in container[name] and "grpc" not in container[name], name
        assert container[name]["timeoutSeconds"] >= 5


def test_dev_overlay_is_one_plain_replica(rendered: dict) -> None:
    docs = rendered["dev"]
    deployment = one(docs, "Deployment", "slimserve")
    spec, container = server_pod(docs)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not [e for e in container.get("env", []) if "TLS" in e["name"] or "TOKEN" in e["name"]]
    assert all("grpc" in container[name] for name in PROBES)  # plaintext: the kubelet's own gRPC probe
    assert one(docs, "PersistentVolumeClaim", "slimserve-models")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not claim_mount(spec, container).get("readOnly")


def test_production_secrets_are_referenced_and_documented_never_committed(rendered: dict) -> None:
    docs = rendered["production"]
    spec, container = server_pod(docs)
    env = {e["name"]: e for e in container["env"]}
    for name in ("SLIMSERVE_AUTH_TOKEN", "SLIMSERVE_ADMIN_TOKEN"):
        assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], name
    referenced = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                  for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert referenced == set(SECRET_VALUES)
    # Files read from the TLS Secret's mount: each must be a key the documented command creates.
    tls_volume = next(v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == TLS_SECRET)
    tls_mount = next(m for m in container["volumeMounts"] if m["name"] == tls_volume["name"])
    files = {e["value"][len(tls_mount["mountPath"]) + 1:] for e in container["env"]
             if e.get("value", "").startswith(tls_mount["mountPath"] + "/")}
    assert files == {"tls.crt", "tls.key", "ca.crt"}

    text = (DEPLOY / "overlays" / "production" / "kustomization.yaml").read_text()
    comments = " ".join(line.lstrip("#").rstrip("\\") for line in text.splitlines() if line.startswith("#"))
    commands = " ".join(comments.split())
    documented: set[tuple[str, str]] = set()
    for statement in commands.split("create secret generic ")[1:]:
        secret, options = statement.split(" ", 1)[0], statement.split(" kubectl ")[0]
        documented |= {(secret, key) for key in re.findall(r"--from-(?:literal|file)=([\w.-]+)=", options)}
    assert set(SECRET_VALUES) <= documented
    assert {(TLS_SECRET, f) for f in files} <= documented
    assert f"generic {TLS_SECRET} --type=kubernetes.io/tls" in commands
    service = one(docs, "Service", "slimserve")["metadata"]
    for name in service_dns_names(service["name"], service["namespace"]):
        assert name in commands, f"the README-style comment should list the certificate name {name}"


def test_queue_time_autoscaling_component(tmp_path: Path) -> None:
    """production + components/queue-time-autoscaling: the HPA also scales on the Pods metric that the
    prometheus-adapter rule defines from the server's queue histogram."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "overlays" / "production", tmp_path)],
        "components": [os.path.relpath(DEPLOY / "components" / "queue-time-autoscaling", tmp_path)],
    }))
    docs = kustomize(tmp_path)
    hpa = one(docs, "HorizontalPodAutoscaler", "slimserve")
    core = tmp_path / "hpa.yaml"
    core.write_text(yaml.safe_dump(hpa))
    done = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, str(core)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1 and pods[0]["target"]["type"] == "AverageValue"
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert [r["name"]["as"] for r in rules] == [pods[0]["metric"]["name"]]
    assert set(rules[0]["resources"]["overrides"]) == {"namespace", "pod"}  # labels the ServiceMonitor adds
    assert set(adapter_series()) == {"slimserve_queue_duration_seconds_sum", "slimserve_queue_duration_seconds_count"}


def adapter_series() -> list[str]:
    """Series the prometheus-adapter rule reads (checked against the real server's /metrics below)."""
    rule = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"][0]
    return sorted(set(re.findall(r"\b(slimserve_\w+)\{", rule["seriesQuery"] + rule["metricsQuery"])))


def service_dns_names(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


# ---- KServe ----

def test_kserve_inference_service(rendered: dict) -> None:
    from kubernetes_validate import validate

    docs = rendered["kserve"]
    isvc = one(docs, "InferenceService", "slimserve")
    assert kind_of(isvc) == INFERENCE_SERVICE
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == one(rendered["dev"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    grpc_port = container["ports"][0]  # KServe routes to the first port; its name marks the protocol
    assert grpc_port["name"] == "h2c" and grpc_port["containerPort"] == 8001 and grpc_port.get("protocol") == "TCP"
    assert one(docs, "ConfigMap", "slimserve-config")["data"]["SLIMSERVE_GRPC_PORT"] == str(grpc_port["containerPort"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = claim_mount(predictor, container)
    assert env["SLIMSERVE_MODEL_REPOSITORY"] == mount["mountPath"] == "/mnt/models" and not mount.get("readOnly")
    assert one(docs, "PersistentVolumeClaim", "slimserve-models")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert predictor["minReplicas"] >= 1 and predictor["maxReplicas"] >= predictor["minReplicas"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in ("RawDeployment", "Serverless")
    # The predictor inlines a PodSpec: check those fields against the Kubernetes Pod schema.
    kserve_only = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "annotations", "labels"}
    assert set(predictor) - kserve_only <= {"containers", "volumes", "securityContext", "terminationGracePeriodSeconds"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {k: v for k, v in predictor.items() if k not in kserve_only}}
    validate(pod, K8S_VERSION, strict=True)


# ---- distributed build ----

def torchrun_flags(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """torchrun's --flag=value options before `-m`, and what follows (module and its arguments)."""
    split = args.index("-m")
    flags = dict(a[2:].split("=", 1) for a in args[:split])
    return flags, args[split + 1:]


def test_distributed_build_indexed_job(rendered: dict) -> None:
    docs = rendered["distributed-build"]
    (job,) = all_of(docs, "Job")
    n = job["spec"]["completions"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == n >= 2
    template = job["spec"]["template"]
    subdomain = template["spec"]["subdomain"]
    rendezvous = one(docs, "Service", subdomain)  # the pods' DNS names live under this Service
    assert rendezvous["spec"]["clusterIP"] == "None" and rendezvous["spec"]["publishNotReadyAddresses"]
    assert selects({"matchLabels": rendezvous["spec"]["selector"]}, template["metadata"]["labels"])
    assert not selects({"matchLabels": rendezvous["spec"]["selector"]},
                       one(docs, "Deployment", "slimserve")["spec"]["template"]["metadata"]["labels"])
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["torchrun"]
    flags, module = torchrun_flags(container["args"])
    assert int(flags["nnodes"]) == n and flags["nproc-per-node"] == "1"
    assert flags["node-rank"] == "$(JOB_COMPLETION_INDEX)"  # 0 ... N-1, set by the Job controller
    # Pod 0 (global rank 0, the one that writes the repository) is <job>-0.<subdomain>.
    assert flags["master-addr"] == f"{job['metadata']['name']}-0.{subdomain}"
    assert int(flags["master-port"]) in {p["containerPort"] for p in container["ports"]}
    assert int(flags["master-port"]) in {p["port"] for p in rendezvous["spec"]["ports"]}
    assert "rdzv-backend" not in flags  # static rendezvous: node rank = Job index, fixed
    assert module[:3] == ["compression.build", "--out", claim_mount(template["spec"], container)["mountPath"]]
    assert one(docs, "PersistentVolumeClaim", "slimserve-models")["spec"]["accessModes"] == ["ReadWriteMany"]


# A teacher that trains in seconds, as in tests/test_compression_distributed.py.
FACTORY = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
'''
QUICK_BUILD = ["--teacher", "ddp_factory:make", "--data", "digits", "--name", "ddp", "--variants", "distilled",
               "--distill-epochs", "2", "--quiet"]


def test_distributed_build_runs_under_torchrun_as_the_job_pods_would(rendered: dict, tmp_path: Path) -> None:
    """One torchrun per Job index, with the Job's exact launcher arguments ($(JOB_COMPLETION_INDEX)
    expanded as the kubelet does); pod 0's DNS name -> 127.0.0.1, the rendezvous port -> a free port,
    the claim's mount -> a folder; a quick teacher appended to the build's arguments."""
    (job,) = all_of(rendered["distributed-build"], "Job")
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mount = claim_mount(spec, container)["mountPath"]
    flags, _ = torchrun_flags(container["args"])
    port = free_port()
    out = tmp_path / "models"
    (tmp_path / "ddp_factory.py").write_text(FACTORY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo"}  # loopback only
    processes = []
    for index in range(job["spec"]["completions"]):
        argv = [expand(a, {"JOB_COMPLETION_INDEX": str(index)}) for a in container["command"] + container["args"]]
        argv = [a.replace(flags["master-addr"], "127.0.0.1").replace(f"--master-port={flags['master-port']}",
                                                                       f"--master-port={port}") for a in argv]
        argv = [str(out) if a == mount else a for a in argv]
        assert argv[0] == "torchrun"
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:], *QUICK_BUILD]
        processes.append(subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=600) for p in processes]
    for p, (_, stderr) in zip(processes, results):
        assert p.returncode == 0, stderr[-3000:]
    manifest_path = out / "ddp" / "manifest.json"
    assert str(manifest_path) in results[0][0]  # rank 0, in pod 0, wrote and reported the repository
    assert all(str(manifest_path) not in stdout for stdout, _ in results[1:])
    manifest = json.loads(manifest_path.read_text())
    assert manifest["variants"]["distilled"]["recipe"]["params"]["processes"] == job["spec"]["completions"]
    assert [p.name for p in out.iterdir()] == ["ddp"]


def test_pytorchjob_variant(rendered: dict) -> None:
    from kubernetes_validate import validate

    docs = rendered["distributed-build-pytorchjob"]
    job = one(docs, "PyTorchJob")
    assert kind_of(job) == PYTORCH_JOB
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    nodes = sum(r["replicas"] for r in replicas.values())
    assert nodes >= 2 and job["spec"]["nprocPerNode"] == "1"
    for role, replica in replicas.items():
        assert replica["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        template = replica["template"]
        (container,) = template["spec"]["containers"]
        # The operator finds the container and the master port by these names.
        assert container["name"] == "pytorch" and any(p["name"] == "pytorchjob-port" for p in container["ports"])
        assert container["command"] == ["torchrun"]
        assert container["image"] == one(rendered["dev"], "Job")["spec"]["template"]["spec"]["containers"][0]["image"]
        assert container["args"] == ["-m", "compression.build", "--out", claim_mount(template["spec"], container)["mountPath"]]
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()}, "template": template},
                 K8S_VERSION, strict=True)
    # torchrun takes its launcher options from the PET_* variables the operator sets (read from its
    # v1.9 source): a Worker of a 2-node job.
    port = next(p["containerPort"] for p in replicas["Master"]["template"]["spec"]["containers"][0]["ports"])
    pet = {"PET_NNODES": str(nodes), "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"],
           "PET_MASTER_ADDR": "slimserve-build-master-0", "PET_MASTER_PORT": str(port)}
    code = ("import json, sys; from torch.distributed.run import get_args_parser; a = get_args_parser().parse_args("
            "sys.argv[1:]); print(json.dumps([a.nnodes, a.node_rank, a.nproc_per_node, a.master_addr, a.master_port,"
            " a.rdzv_backend, a.module, a.training_script, a.training_script_args]))")
    done = subprocess.run([sys.executable, "-c", code, *replicas["Worker"]["template"]["spec"]["containers"][0]["args"]],
                          env={**os.environ, **pet}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [
        str(nodes), 1, "1", "slimserve-build-master-0", port, "static", True, "compression.build", ["--out", "/models"]]


# ---- the real server, as the rendered pod runs it ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in env values, command and args ($$ escapes; unknown stays)."""
    return re.sub(r"\$\$|\$\((\w+)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def image_config(dockerfile: Path) -> tuple[dict[str, str], list[str], list[str]]:
    """ENV, ENTRYPOINT and CMD of the serving image's Dockerfile."""
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
        elif line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line[len("ENTRYPOINT "):])
        elif line.startswith("CMD "):
            cmd = json.loads(line[len("CMD "):])
    return env, entrypoint, cmd


def make_tls_secret(folder: Path, names: list[str]) -> None:
    """tls.crt, tls.key and ca.crt as the documented Secret holds them: a CA and a server certificate
    for the Service's DNS names."""
    import datetime as dt

    from certs import make_ca
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True)
    ca, ca_name, ca_key = make_ca(folder, "slimserve-test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    shutil.copy(ca.cert, folder / "ca.crt")
    ca.cert.unlink()
    ca.key.unlink()


@dataclass
class LocalPod:
    """A rendered server container moved onto this machine: same command, environment and files, with
    container ports mapped to free loopback ports and volume mounts to folders."""
    argv: list[str]
    env: dict[str, str]
    container: dict
    spec: dict
    ports: dict[int, int]  # containerPort -> local port
    mounts: dict[str, Path]  # mountPath -> local folder

    def local(self, value: str) -> str:
        for path, folder in self.mounts.items():
            if value == path or value.startswith(path + "/"):
                return str(folder) + value[len(path):]
        return value

    def command(self, argv: list[str]) -> list[str]:
        argv = [self.local(expand(a, self.env)) for a in argv]
        return [sys.executable, *argv[1:]] if argv[0] == "python" else argv

    def process_env(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SLIMSERVE_", "PROBE_"))}
        return {**inherited, **self.env, "PYTHONUNBUFFERED": "1"}

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, str):
            name_or_number = next(p["containerPort"] for p in self.container["ports"] if p["name"] == name_or_number)
        return self.ports[name_or_number]


def local_pod(docs: list[dict], folder: Path) -> LocalPod:
    spec, container = server_pod(docs)
    namespace = next(d["metadata"]["namespace"] for d in docs if d["kind"] == "ConfigMap")
    image_env, entrypoint, cmd = image_config(DEPLOY / "Dockerfile")
    assert container["image"].split(":")[0] == "slimserve"  # the image that Dockerfile builds

    # Environment as the kubelet assembles it: image ENV < envFrom < env; $(VAR) sees envFrom and earlier env.
    declared: dict[str, str] = {}
    for source in container.get("envFrom", []):
        declared.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            declared[entry["name"]] = expand(entry["value"], declared)
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            declared[entry["name"]] = SECRET_VALUES[(ref["name"], ref["key"])]
        else:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", entry
            declared[entry["name"]] = namespace
    env = {**image_env, **declared}

    # Volumes: the claim -> a tiny repository; the TLS Secret -> test certificates; ConfigMaps -> their
    # rendered files; emptyDir -> an empty folder.
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume, local = volumes[mount["name"]], folder / "volumes" / mount["name"]
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] == "slimserve-models"
            local.mkdir(parents=True)
            write_tiny_repository(local)
        elif "secret" in volume:
            assert volume["secret"]["secretName"] == TLS_SECRET
            service = one(docs, "Service", "slimserve")["metadata"]
            make_tls_secret(local, service_dns_names(service["name"], service["namespace"]))
        elif "configMap" in volume:
            local.mkdir(parents=True)
            for name, text in one(docs, "ConfigMap", volume["configMap"]["name"])["data"].items():
                (local / name).write_text(text)
        else:
            assert "emptyDir" in volume, volume
            local.mkdir(parents=True)
        mounts[mount["mountPath"]] = local

    ports = {p["containerPort"]: free_port() for p in container["ports"]}
    pod = LocalPod([], env, container, spec, ports, mounts)
    # Tests listen on loopback only; the pod listens on every interface.
    assert env["SLIMSERVE_HOST"] == "0.0.0.0"
    env["SLIMSERVE_HOST"] = "127.0.0.1"
    for key in ("SLIMSERVE_GRPC_PORT", "SLIMSERVE_METRICS_PORT"):
        assert int(env[key]) in ports, f"{key}={env[key]} is not a container port"
        env[key] = str(ports[int(env[key])])
    for key, value in env.items():
        env[key] = pod.local(value)
    assert Path(env["SLIMSERVE_MODEL_REPOSITORY"]).is_dir(), "the repository path is not on the claim's mount"
    argv = container.get("command", entrypoint) + container.get("args", [] if "command" in container else cmd)
    pod.argv = pod.command(argv)
    return pod


def start(pod: LocalPod, timeout: float = 60.0) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(pod.argv, cwd=ROOT, env=pod.process_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if READY.search(line):
            _drain(process, lines)
            return process, lines
    process.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


def run_probe(pod: LocalPod, probe: dict) -> tuple[bool, str]:
    """One probe, as the kubelet runs it: a gRPC health Check on the probe's port (plaintext, the
    probe's `service`, default ""), or the exec command in the container's environment, within
    timeoutSeconds (default 1)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    timeout = probe.get("timeoutSeconds", 1)
    if "grpc" in probe:
        with grpc.insecure_channel(f"127.0.0.1:{pod.port(probe['grpc']['port'])}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=timeout)
            except grpc.RpcError as error:
                return False, f"{error.code().name}: {error.details()}"
        return reply.status == health_pb2.HealthCheckResponse.SERVING, str(reply.status)
    began = time.monotonic()
    try:
        done = subprocess.run(pod.command(probe["exec"]["command"]), env=pod.process_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"exec probe took over timeoutSeconds={timeout}"
    return done.returncode == 0, f"exit {done.returncode} in {time.monotonic() - began:.2f}s: {done.stdout}{done.stderr}"


def infer(pod: LocalPod, token: str | None) -> np.ndarray:
    import tritonclient.grpc as triton

    url = f"127.0.0.1:{pod.env['SLIMSERVE_GRPC_PORT']}"
    if pod.env.get("SLIMSERVE_TLS_CERT"):
        client = triton.InferenceServerClient(
            url, ssl=True, root_certificates=pod.env["PROBE_TLS_CA"],
            channel_args=[("grpc.ssl_target_name_override", pod.env["PROBE_TLS_SERVER_NAME"])])
    else:
        client = triton.InferenceServerClient(url)
    x = triton.InferInput("input", [1, FEATURES], "FP32")
    x.set_data_from_numpy(np.ones((1, FEATURES), np.float32))
    headers = {"authorization": f"Bearer {token}"} if token else None
    return client.infer("tiny", [x], headers=headers, client_timeout=10).as_numpy("logits")


@pytest.mark.parametrize("overlay", ["dev", "production", "kserve"])
def test_real_server_runs_and_answers_probes_as_in_the_pod(overlay: str, rendered: dict, tmp_path: Path) -> None:
    from tritonclient.utils import InferenceServerException

    pod = local_pod(rendered[overlay], tmp_path)
    process, lines = start(pod)
    try:
        for name in PROBES:
            probe = pod.container[name]
            # The kubelet retries every periodSeconds until failureThreshold: give it a few tries.
            deadline = time.monotonic() + 20
            ok, detail = run_probe(pod, probe)
            while not ok and time.monotonic() < deadline:
                time.sleep(0.5)
                ok, detail = run_probe(pod, probe)
            assert ok, f"{name}: {detail}\n{''.join(lines)}"

        token = pod.env.get("SLIMSERVE_AUTH_TOKEN")
        if overlay == "production":
            assert token == SECRET_VALUES[("slimserve-tokens", "auth-token")]
            with pytest.raises(InferenceServerException) as refused:
                infer(pod, None)
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
            # Why production cannot use the kubelet's gRPC probe: plaintext against the TLS port fails.
            plaintext, detail = run_probe(pod, {"grpc": {"port": "grpc"}})
            assert not plaintext and "UNAVAILABLE" in detail
            # The exec probe verifies the certificate: a name it does not carry fails the probe.
            right = pod.env["PROBE_TLS_SERVER_NAME"]
            pod.env["PROBE_TLS_SERVER_NAME"] = "not-the-service.example"
            assert not run_probe(pod, pod.container["readinessProbe"])[0]
            pod.env["PROBE_TLS_SERVER_NAME"] = right
        assert infer(pod, token).shape == (1, 3)

        with urllib.request.urlopen(f"http://127.0.0.1:{pod.port('metrics')}/metrics", timeout=5) as response:
            assert response.status == 200
            body = response.read().decode()
        assert "process_resident_memory_bytes" in body and 'slimserve_requests_total{' in body
        for series in adapter_series():  # what the queue-time autoscaling rule reads
            assert re.search(rf"^{series}\{{", body, re.M), series
    finally:
        grace = pod.spec.get("terminationGracePeriodSeconds", 30)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)  # what the kubelet sends, then SIGKILL after the grace period
        try:
            status = process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            status = None
    assert status == 0 and time.monotonic() - began < grace, "".join(lines)
    for name in PROBES:  # a stopped server fails every probe: the probes check something
        assert not run_probe(pod, pod.container[name])[0], name
