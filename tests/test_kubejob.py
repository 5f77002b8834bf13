"""server.kubejob: its Job from deploy/'s template passes the Job schema; its API calls, against a stand-in."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from certs import make_ca, make_leaf
from server_process import ROOT
from test_deploy import DEPLOY, K8S_VERSION, OVERLAYS, claim_mount, kustomize, one, selects, server_pod
from tiny_repository import write_tiny_repository

from server import kubejob
from server.settings import parse_settings

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")

# Overlays whose servers may run Kubernetes Jobs: those with the RWX claim and a Deployment (production and
# the overlays built on it). dev (ReadWriteOnce) and kserve (no Deployment) are left without.
WITH_JOBS = ("production", "distributed-build", "distributed-build-pytorchjob")
TEMPLATE = "slimserve-job-template"
STAGING = Path("/models/digits/.pruned2.partial-0a1b2c3d4e5f")
SAMPLE_ARGS = ["compression.onthefly", "--model-folder", "/models/digits", "--parent", "teacher", "--name", "pruned2",
               "--recipe", "prune", "--params", '{"sparsity": "0.5"}', "--out", str(STAGING), "--server-pid", "7"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS}


def template_of(docs: list[dict]) -> tuple[dict, str]:
    """The Job template out of the rendered ConfigMap, and the path the server reads it from."""
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(TEMPLATE + "-"))
    spec, container = server_pod(docs)
    volume = next(v for v in spec["volumes"] if v.get("configMap", {}).get("name") == config["metadata"]["name"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    path = env["SLIMSERVE_KUBERNETES_JOB_TEMPLATE"]
    assert path.startswith(mount["mountPath"] + "/") and mount.get("readOnly")
    (key,) = config["data"]
    assert path == f"{mount['mountPath']}/{key}", "the setting names the ConfigMap's file"
    return json.loads(config["data"][key]), path


# ---- the manifests ----

@needs_kubectl
def test_rbac_and_template_only_where_jobs_can_write(rendered: dict) -> None:
    """ServiceAccount, Role, RoleBinding and template ConfigMap, valid against the Kubernetes 1.30 schemas
    (strict), in the overlays with the RWX claim; the server pods run as that account."""
    from kubernetes_validate import validate

    for overlay, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        if overlay not in WITH_JOBS:
            assert not kinds & {"ServiceAccount", "Role", "RoleBinding"}, overlay
            assert not any(d["metadata"]["name"].startswith(TEMPLATE) for d in docs), overlay
            continue
        assert one(docs, "PersistentVolumeClaim", "slimserve-models")["spec"]["accessModes"] == ["ReadWriteMany"]
        account = one(docs, "ServiceAccount", "slimserve")
        binding = one(docs, "RoleBinding", "slimserve-jobs")
        role = one(docs, "Role", binding["roleRef"]["name"])
        assert binding["roleRef"]["kind"] == "Role"
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slimserve",
                                        "namespace": account["metadata"]["namespace"]}]
        spec, _ = server_pod(docs)
        assert spec["serviceAccountName"] == "slimserve" and spec.get("automountServiceAccountToken", True)
        template, _ = template_of(docs)
        assert template["spec"]["template"]["spec"]["automountServiceAccountToken"] is False  # the Job needs no API
        config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(TEMPLATE))
        for doc in (account, role, binding, config):
            validate(doc, K8S_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("overlay", WITH_JOBS)
def test_rendered_job_passes_the_job_schema_and_fits_the_server_pod(overlay: str, rendered: dict) -> None:
    from kubernetes_validate import validate

    docs = rendered[overlay]
    template, _ = template_of(docs)
    owner = {"name": "slimserve-5d8f7c9b4-x2x7q", "uid": "0b6b1a0e-8d40-4f0e-9a57-8c1c8f7e2d11"}
    namespace = one(docs, "ServiceAccount", "slimserve")["metadata"]["namespace"]
    job = kubejob.render_job(template, SAMPLE_ARGS, kubejob.job_name(STAGING), namespace, owner, STAGING)
    validate(job, K8S_VERSION, strict=True)

    assert job["metadata"]["name"] == "slimserve-job-0a1b2c3d4e5f" and job["metadata"]["namespace"] == namespace
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", **owner}]
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] > 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["restartPolicy"] == "Never"
    # The command: python -m <module> with the server's flags, less --server-pid (another PID namespace).
    assert container["command"] == ["python", "-m", "compression.onthefly"]
    assert container["args"] == SAMPLE_ARGS[1:-2]

    # The build image, at the tag the base's `images:` gives the build Job (ConfigMap data is not rewritten).
    base = kustomize(DEPLOY / "overlays" / "dev")
    (build,) = one(base, "Job", "slimserve-build")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == build["image"] and build["image"].startswith("slimserve-build:")

    # The same claim at the same path as the server, writable; the staging folder lies on it.
    server_spec, server = server_pod(docs)
    assert claim_mount(pod, container)["mountPath"] == claim_mount(server_spec, server)["mountPath"]
    assert not claim_mount(pod, container).get("readOnly")
    assert STAGING.is_relative_to(claim_mount(pod, container)["mountPath"])

    # Non-root as the server: same uid/gid and fsGroup, so each can write what the other made.
    for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup"):
        assert pod["securityContext"][key] == server_spec["securityContext"][key], key
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    if container["securityContext"].get("readOnlyRootFilesystem"):  # then /tmp (and HOME) must be writable
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = {m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
        assert "/tmp" in writable and env.get("HOME", "/") in writable

    # No Service, PodDisruptionBudget, Deployment or spread constraint counts the Job's pod as a server.
    labels = job["spec"]["template"]["metadata"]["labels"]
    for doc in docs:
        selector = {"Service": lambda d: {"matchLabels": d["spec"].get("selector") or {}},
                    "PodDisruptionBudget": lambda d: d["spec"]["selector"],
                    "Deployment": lambda d: d["spec"]["selector"]}.get(doc["kind"])
        if selector:
            assert not selects(selector(doc), labels), (doc["kind"], doc["metadata"]["name"])
    for constraint in server_spec.get("topologySpreadConstraints", []):
        assert not selects(constraint["labelSelector"], labels)


@needs_kubectl
def test_server_reads_the_template_at_the_mounted_path(rendered: dict, tmp_path: Path) -> None:
    """The Deployment's env names the file the ConfigMap mount holds; the setting parses it (the server
    refuses to start with a template path that is no file). tests/test_deploy.py also starts the real
    production server with this mount laid out locally."""
    docs = rendered["production"]
    template, path = template_of(docs)
    local = tmp_path / Path(path).name
    local.write_text(json.dumps(template))
    settings = parse_settings([], environ={"SLIMSERVE_KUBERNETES_JOB_TEMPLATE": str(local)})
    assert kubejob.load_template(settings.kubernetes_job_template) == template
    with pytest.raises(ValueError, match="no such file"):
        parse_settings([], environ={"SLIMSERVE_KUBERNETES_JOB_TEMPLATE": str(tmp_path / "missing.json")})


def test_template_and_arguments_that_cannot_work_are_refused(tmp_path: Path) -> None:
    template = json.loads((DEPLOY / "components" / "kubernetes-jobs" / "job-template.json").read_text())
    with pytest.raises(ValueError, match="module name"):
        kubejob.render_job(template, ["-c", "import os"], "slimserve-job-x", "ns")
    with pytest.raises(ValueError, match="no writable claim"):  # kserve's /mnt/models with this template
        kubejob.render_job(template, ["server.onthefly"], "slimserve-job-x", "ns", None,
                           Path("/mnt/models/m/.v.partial-1"))
    with pytest.raises(ValueError, match="mounts nothing at /data/train.npz"):  # --data outside the claim
        kubejob.render_job(template, ["compression.onthefly", "--data", "/data/train.npz"], "slimserve-job-x", "ns",
                           None, Path("/models/m/.v.partial-1"))
    two = json.loads(json.dumps(template))
    two["spec"]["template"]["spec"]["containers"] *= 2
    (tmp_path / "two.json").write_text(json.dumps(two))
    with pytest.raises(ValueError, match="exactly one container"):
        kubejob.load_template(tmp_path / "two.json")
    assert kubejob.job_name(Path("/m/.Int8_B.partial-AB12")) == "slimserve-job-ab12"


# ---- contract test of our API requests against a stand-in API server (FakeApi). It is not Kubernetes:
# no request here reached a real cluster; the endpoints, bodies and log format are as documented. ----

NAMESPACE, TOKEN, SERVER_POD = "slimserve", "test-service-account-token", "slimserve-5d8f7c9b4-x2x7q"
CHILDREN = {
    "slow_child.py": "import time\nprint('step: started', flush=True)\ntime.sleep(600)\n",
    "chatty_child.py": "for i in range(1, 5):\n    print(f'line {i}', flush=True)\n",
}


class FakeApi(ThreadingHTTPServer):
    """Stand-in for the API server endpoints server.kubejob calls, over TLS with a bearer token. It checks
    the shapes of our requests (paths, verbs, bodies, the followed log); it is not Kubernetes. Its 'kubelet'
    runs a created Job's container command as a local process (python = this interpreter, with the
    container's env) and keeps its stdout as the pod log; deleting the Job kills the process."""

    daemon_threads = True

    def __init__(self, folder: Path, pythonpath: list[Path]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        ca, ca_name, ca_key = make_ca(folder, "fake-apiserver-ca")
        leaf = make_leaf(folder, "fake-apiserver", ca_name, ca_key, server=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(leaf.cert, leaf.key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.ca = ca.cert
        self.pythonpath = pythonpath
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.jobs: dict[str, dict] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, list[str]] = {}
        self.exit_codes: dict[str, int] = {}
        self.changed = threading.Condition()
        self.drop_first_stream_after: int | None = None  # lines; then the connection is cut mid-stream

    def service_account(self, folder: Path, token: str = TOKEN) -> kubejob.Api:
        folder.mkdir()
        (folder / "token").write_text(token)
        (folder / "namespace").write_text(NAMESPACE)
        shutil.copy(self.ca, folder / "ca.crt")
        return kubejob.Api.in_cluster(folder, {"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                                               "KUBERNETES_SERVICE_PORT": str(self.server_address[1])})

    def start_pod(self, job: dict) -> None:
        pod = job["metadata"]["name"] + "-pod"
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, self.pythonpath)),
               **{e["name"]: e["value"] for e in container.get("env", [])}}
        assert container["command"][0] == "python"
        process = subprocess.Popen([sys.executable, *container["command"][1:], *container["args"]],
                                   stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        with self.changed:
            self.processes[pod], self.logs[pod] = process, []

        def collect() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                with self.changed:
                    self.logs[pod].append(line)
                    self.changed.notify_all()
            code = process.wait()
            with self.changed:
                self.exit_codes[pod] = code
                self.changed.notify_all()

        threading.Thread(target=collect, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApi

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, message: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code})

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((method, url.path, query, body))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._status(401, "Unauthorized")
        jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
        pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
        if method == "POST" and url.path == jobs:
            self.server.jobs[body["metadata"]["name"]] = body
            self.server.start_pod(body)
            return self._send(201, body)
        if m := re.fullmatch(re.escape(jobs) + r"/([\w-]+)", url.path):
            job = self.server.jobs.pop(m[1], None) if method == "DELETE" else self.server.jobs.get(m[1])
            if job is None:
                return self._status(404, f'jobs.batch "{m[1]}" not found')
            if method == "DELETE":
                self.server.processes[m[1] + "-pod"].kill()  # the garbage collector deletes the pod
            return self._send(200, {**job, "status": {}})
        if method == "GET" and url.path == pods:
            name = query["labelSelector"].removeprefix("job-name=")
            items = [self._pod(name + "-pod")] if name in self.server.jobs else []
            return self._send(200, {"kind": "PodList", "apiVersion": "v1", "items": items})
        if m := re.fullmatch(re.escape(pods) + r"/([\w-]+)", url.path):
            if m[1] == SERVER_POD:
                return self._send(200, {"metadata": {"name": SERVER_POD, "uid": "uid-of-the-server-pod"}})
            if m[1].removesuffix("-pod") not in self.server.jobs:
                return self._status(404, f'pods "{m[1]}" not found')
            return self._send(200, self._pod(m[1]))
        if m := re.fullmatch(re.escape(pods) + r"/([\w-]+)/log", url.path):
            return self._log(m[1], query)
        return self._status(404, f"no route {method} {url.path}")

    def _pod(self, name: str) -> dict:
        with self.server.changed:
            code = self.server.exit_codes.get(name)
        state = {"running": {}} if code is None else {"terminated": {"exitCode": code,
                                                                      "reason": "Completed" if code == 0 else "Error"}}
        return {"metadata": {"name": name}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "job", "state": state}]}}

    def _log(self, pod: str, query: dict[str, str]) -> None:
        """The pod log as the API serves it: from its first line, chunked; follow=true holds the stream
        open until the container ends."""
        assert set(query) == {"container", "follow"} and query["container"] == "job", query
        assert query["follow"] in ("true", "false")
        follow = query["follow"] == "true"
        drop = self.server.drop_first_stream_after if follow else None
        if drop is not None:
            self.server.drop_first_stream_after = None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        done, sent = 0, 0
        try:
            while True:
                with self.server.changed:
                    self.server.changed.wait_for(lambda done=done: not follow or len(self.server.logs[pod]) > done
                                                 or pod in self.server.exit_codes)
                    batch, ended = self.server.logs[pod][done:], pod in self.server.exit_codes
                done += len(batch)
                for text in batch:
                    if sent == drop:
                        self.close_connection = True  # cut: no end chunk
                        return
                    data = text.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    sent += 1
                if ended or not follow:
                    self.wfile.write(b"0\r\n\r\n")
                    return
        except (BrokenPipeError, ConnectionResetError):  # the client hung up (a cancelled job)
            self.close_connection = True

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


@pytest.fixture
def fake_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    monkeypatch.setenv("HOSTNAME", SERVER_POD)  # the server's pod name, as in a Deployment's pod
    (tmp_path / "child").mkdir()
    for name, code in CHILDREN.items():
        (tmp_path / "child" / name).write_text(code)
    api = FakeApi(tmp_path, [ROOT, tmp_path / "child"])
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    yield api
    api.shutdown()
    api.server_close()
    for process in api.processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def job_setup(tmp_path: Path) -> tuple[Path, Path, Any]:
    """A tiny repository, a staging folder in it, and settings whose template mounts the claim at its path."""
    repo = tmp_path / "repo"
    folder = write_tiny_repository(repo)
    staging = folder / ".q8.partial-0a1b2c3d4e5f"
    staging.mkdir()
    template = json.loads((DEPLOY / "components" / "kubernetes-jobs" / "job-template.json").read_text())
    container = template["spec"]["template"]["spec"]["containers"][0]
    next(m for m in container["volumeMounts"] if m["name"] == "models")["mountPath"] = str(repo)
    (tmp_path / "job.json").write_text(json.dumps(template))
    return folder, staging, parse_settings(["--kubernetes-job-template", str(tmp_path / "job.json")], environ={})


def role_allows(requests: list[tuple[str, str, dict, Any]]) -> None:
    """Each request we made is allowed by the rendered production Role (resource and verb)."""
    if shutil.which("kubectl") is None:
        return
    role = one(kustomize(DEPLOY / "overlays" / "production"), "Role", "slimserve-jobs")
    for method, path, _, _ in requests:
        group = "batch" if path.startswith("/apis/batch/") else ""
        parts = path.split("/namespaces/")[1].split("/")[1:]  # resource, name, subresource
        resource = "/".join(parts[:1] + parts[2:])
        verb = {"POST": "create", "DELETE": "delete"}.get(method) or ("get" if len(parts) > 1 else "list")
        assert any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   for r in role["rules"]), (method, path)


def test_contract_a_job_runs_streams_its_lines_and_returns_the_exit_status(fake_api: FakeApi, tmp_path: Path) -> None:
    from kubernetes_validate import validate

    folder, staging, settings = job_setup(tmp_path)
    api = fake_api.service_account(tmp_path / "sa")
    args = ["server.onthefly", "--model-folder", str(folder), "--parent", "teacher", "--name", "q8",
            "--recipe", "int8_dynamic", "--out", str(staging), "--server-pid", "4242"]  # 4242: not the pod's parent
    lines: list[str] = []
    code = asyncio.run(kubejob.run(args, staging, lines.append, settings, api=api))

    assert code == 0, lines
    assert lines[0] == "step: Kubernetes Job slimserve-job-0a1b2c3d4e5f created"
    assert "step: started" in lines and not [x for x in lines if x.startswith("error: ")]
    result = json.loads(next(x for x in lines if x.startswith("result: "))[8:])
    assert result["file"] == "q8/model.onnx" and (staging / "model.onnx").is_file()
    (post,) = [r for r in fake_api.requests if r[0] == "POST"]
    assert post[1] == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    validate(post[3], K8S_VERSION, strict=True)
    assert post[3]["metadata"]["ownerReferences"][0] == {"apiVersion": "v1", "kind": "Pod", "name": SERVER_POD,
                                                        "uid": "uid-of-the-server-pod"}
    assert not [r for r in fake_api.requests if r[0] == "DELETE"]  # a finished Job is left to its TTL
    role_allows(fake_api.requests)


def test_contract_a_failed_job_is_deleted_and_its_error_line_kept(fake_api: FakeApi, tmp_path: Path) -> None:
    folder, staging, settings = job_setup(tmp_path)
    api = fake_api.service_account(tmp_path / "sa")
    args = ["server.onthefly", "--model-folder", str(folder), "--parent", "no-such-variant", "--name", "q8",
            "--recipe", "int8_dynamic", "--out", str(staging)]
    lines: list[str] = []
    code = asyncio.run(kubejob.run(args, staging, lines.append, settings, api=api))

    assert code == 1
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and "no-such-variant" in errors[0]  # the child's own reason, not a generic one
    (delete,) = [r for r in fake_api.requests if r[0] == "DELETE"]
    assert delete[1] == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/slimserve-job-0a1b2c3d4e5f"
    assert delete[3]["propagationPolicy"] == "Background"
    role_allows(fake_api.requests)


def test_contract_cancelling_the_job_deletes_it(fake_api: FakeApi, tmp_path: Path) -> None:
    """Server shutdown cancels the job's task: the Job is deleted, which ends its pod and the log stream."""
    _, staging, settings = job_setup(tmp_path)
    api = fake_api.service_account(tmp_path / "sa")

    async def scenario() -> None:
        started = asyncio.Event()

        def on_line(line: str) -> None:
            if line == "step: started":
                started.set()

        task = asyncio.create_task(kubejob.run(["slow_child"], staging, on_line, settings, api=api))
        await asyncio.wait_for(started.wait(), 60)  # a hang guard only: the child prints at once
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    (delete,) = [r for r in fake_api.requests if r[0] == "DELETE"]
    assert delete[3]["propagationPolicy"] == "Background"
    assert fake_api.processes["slimserve-job-0a1b2c3d4e5f-pod"].wait(30) == -signal.SIGKILL


def test_contract_a_refused_request_is_one_error_line(fake_api: FakeApi, tmp_path: Path) -> None:
    _, staging, settings = job_setup(tmp_path)
    api = fake_api.service_account(tmp_path / "sa", token="wrong-token")
    lines: list[str] = []
    assert asyncio.run(kubejob.run(["server.onthefly"], staging, lines.append, settings, api=api)) == 1
    assert lines == ["error: Kubernetes API: 401: Unauthorized"]
    assert not fake_api.jobs


def test_contract_a_dropped_log_stream_is_reopened_without_losing_or_repeating_lines(
        fake_api: FakeApi, tmp_path: Path) -> None:
    """The connection is cut after 2 of 4 lines: the reopened stream (or the read after the end) starts
    at the first line again, and the 2 already passed on are skipped."""
    _, staging, settings = job_setup(tmp_path)
    fake_api.drop_first_stream_after = 2
    lines: list[str] = []
    code = asyncio.run(kubejob.run(["chatty_child"], staging, lines.append, settings,
                                   api=fake_api.service_account(tmp_path / "sa")))
    assert code == 0
    assert [x for x in lines if not x.startswith("step: ")] == ["line 1", "line 2", "line 3", "line 4"]
    assert len([r for r in fake_api.requests if r[1].endswith("/log")]) >= 2


def test_without_a_template_the_runner_is_refused(tmp_path: Path) -> None:
    lines: list[str] = []
    settings = parse_settings([], environ={})
    assert asyncio.run(kubejob.run(["server.onthefly"], tmp_path, lines.append, settings)) == 1
    assert len(lines) == 1 and "--kubernetes-job-template" in lines[0]
