"""Runs an on-the-fly job's child as a Kubernetes Job (build image, shared repository) and streams its log."""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import logging
import os
import re
import socket
import ssl
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator, Callable, Iterator

__all__ = ["Api", "KubeError", "job_name", "load_template", "render_job", "run"]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
COMPONENT = "variant-job"
JOB_ID_LABEL = "slimserve.io/job-id"
# Defaults for a template that leaves them out: a Job that never ends (a pod that cannot be scheduled)
# would hold the server's one job slot forever, and finished Jobs would pile up.
DEFAULT_DEADLINE_SECONDS = 3600
DEFAULT_TTL_SECONDS = 3600
POLL_SECONDS = 2.0  # between status reads while the pod is pending; gentle on the API server
# A log stream silent this long is reopened (lines already passed on are skipped): a connection that a
# proxy dropped without a FIN would otherwise hang the job until its deadline.
STREAM_IDLE_SECONDS = 300.0
# Waiting reasons after which the container will not start without someone changing the cluster.
FATAL_WAITING = {"ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError",
                 "ErrImageNeverPull"}
MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class KubeError(Exception):
    """A Kubernetes API call failed: HTTP status (0 = no answer) and the API's one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


class _Failed(Exception):
    """The Job ended without a result; the message is the one-line reason for the user."""


@dataclass
class Api:
    """The few Kubernetes API calls a job needs, over HTTPS with a bearer token (standard library only)."""

    host: str
    port: int
    token: str
    namespace: str
    context: ssl.SSLContext
    timeout: float = 30.0

    @classmethod
    def in_cluster(cls, folder: Path = SERVICE_ACCOUNT, environ: dict[str, str] | None = None) -> Api:
        """From the pod's service account (token, CA, namespace files) and KUBERNETES_SERVICE_HOST/PORT."""
        env = os.environ if environ is None else environ
        if not env.get("KUBERNETES_SERVICE_HOST"):
            raise KubeError(0, "not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset)")
        try:
            token = (folder / "token").read_text().strip()
            namespace = (folder / "namespace").read_text().strip()
            context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
        except OSError as exc:
            raise KubeError(0, f"no service account token in {folder} ({exc.strerror or exc}); "
                               "does the server pod have a serviceAccountName with the job Role?") from None
        return cls(env["KUBERNETES_SERVICE_HOST"], int(env.get("KUBERNETES_SERVICE_PORT", "443")), token,
                   namespace, context)

    def _connect(self, timeout: float | None) -> http.client.HTTPSConnection:
        host = self.host.strip("[]")  # an IPv6 service address comes without brackets; tolerate them
        return http.client.HTTPSConnection(host, self.port, context=self.context, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}

    def request(self, method: str, path: str, body: dict | None = None, query: dict[str, str] | None = None) -> dict:
        """One call; the decoded JSON answer, or KubeError with the API's message."""
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = self._connect(self.timeout)
        try:
            connection.request(method, url, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise KubeError(0, f"{method} {path}: {exc}") from None
        finally:
            connection.close()
        answer = _json(raw)
        if not 200 <= response.status < 300:
            message = answer.get("message") or raw.decode(errors="replace")[:200] or response.reason
            raise KubeError(response.status, str(message).splitlines()[0] if message else response.reason)
        return answer

    def open_stream(self, path: str, query: dict[str, str]) -> _Stream:
        """A long GET whose body is read line by line (a followed pod log)."""
        connection = self._connect(STREAM_IDLE_SECONDS)
        try:
            connection.request("GET", path + "?" + urllib.parse.urlencode(query), headers=self._headers())
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise KubeError(0, f"GET {path}: {exc}") from None
        if response.status != 200:
            raw = response.read()
            connection.close()
            raise KubeError(response.status, str(_json(raw).get("message") or response.reason).splitlines()[0])
        return _Stream(connection, response)


class _Stream:
    """An open streaming response; `interrupt()` from another thread ends a blocked read."""

    def __init__(self, connection: http.client.HTTPSConnection, response: http.client.HTTPResponse) -> None:
        self.connection, self.response = connection, response

    def lines(self) -> Iterator[str]:
        while True:
            raw = self.response.readline()
            if not raw:
                return
            yield raw.decode(errors="replace").rstrip("\r\n")

    def interrupt(self) -> None:
        # Only a shutdown: it wakes a reader blocked in recv, which then closes the connection itself
        # (http.client's close() under a running reader fails inside http.client).
        sock = self.connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.connection.close()


def _json(raw: bytes) -> dict:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ---- the Job object ----

def load_template(path: Path) -> dict[str, Any]:
    """The operator's Job template (JSON, mounted from the slimserve-job-template ConfigMap)."""
    try:
        template = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"Kubernetes job template {path}: {exc}") from None
    if not isinstance(template, dict) or (template.get("apiVersion"), template.get("kind")) != ("batch/v1", "Job"):
        raise ValueError(f"Kubernetes job template {path}: not a batch/v1 Job")
    containers = template.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    if not isinstance(containers, list) or len(containers) != 1:
        raise ValueError(f"Kubernetes job template {path}: give exactly one container (the job's)")
    return template


def job_name(staging: Path) -> str:
    """slimserve-job-<job id>, the id taken from the staging folder `.<variant>.partial-<job id>`."""
    job_id = re.sub(r"[^a-z0-9-]", "-", staging.name.rpartition(".partial-")[2].lower()).strip("-")
    return f"slimserve-job-{(job_id or uuid.uuid4().hex[:12])[:40]}"  # a label value: at most 63 characters


def _without_server_pid(flags: list[str]) -> list[str]:
    # The pod has its own PID namespace: server.onthefly would not find the server as its parent and exit
    # at once. The Job's lifetime follows the server instead through deletion and the ownerReference.
    kept: list[str] = []
    skip = False
    for flag in flags:
        if skip:
            skip = False
        elif flag == "--server-pid":
            skip = True
        elif not flag.startswith("--server-pid="):
            kept.append(flag)
    return kept


def render_job(template: dict[str, Any], args: list[str], name: str, namespace: str,
               owner: dict[str, str] | None = None, staging: Path | None = None) -> dict[str, Any]:
    """The Job to create: the template with name, namespace, labels and `python -m <args>` filled in."""
    if not args or not MODULE.match(args[0]):
        raise ValueError(f"job arguments must start with a module name, got {args[:1]}")
    job = copy.deepcopy(template)
    job.pop("status", None)
    labels = {"app.kubernetes.io/name": "slimserve", "app.kubernetes.io/component": COMPONENT,
              JOB_ID_LABEL: name.removeprefix("slimserve-job-")}
    meta = job.setdefault("metadata", {})
    for key in ("generateName", "resourceVersion", "uid", "creationTimestamp"):
        meta.pop(key, None)
    meta.update(name=name, namespace=namespace)
    meta["labels"] = {**meta.get("labels", {}), **labels}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", **owner}]
    spec = job["spec"]
    # One pod, never a second try: a retry would write into the same staging folder, and the log being
    # followed is the first pod's. The server reports the failure; the user asks again.
    spec["backoffLimit"] = 0
    spec.setdefault("activeDeadlineSeconds", DEFAULT_DEADLINE_SECONDS)
    spec.setdefault("ttlSecondsAfterFinished", DEFAULT_TTL_SECONDS)
    pod_meta = spec["template"].setdefault("metadata", {})
    pod_meta["labels"] = {**pod_meta.get("labels", {}), **labels}
    pod = spec["template"]["spec"]
    pod["restartPolicy"] = "Never"  # OnFailure would rerun the child in place and print its lines again
    container = pod["containers"][0]
    container["command"] = ["python", "-m", args[0]]
    container["args"] = _without_server_pid(list(args[1:]))
    if staging is not None:
        _check_mounted(pod, container, staging, container["args"])
    return job


def _check_mounted(pod: dict, container: dict, staging: Path, args: list[str]) -> None:
    """The staging folder must lie on a claim the container mounts writable, at the path the server sees it,
    and every other absolute path in the arguments (the model folder, --data files) on some mount."""
    claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    mounts = container.get("volumeMounts", [])

    def under(path: str, writable: bool) -> bool:
        return any(PurePosixPath(path).is_relative_to(PurePosixPath(m["mountPath"])) for m in mounts
                   if not writable or (m["name"] in claims and not m.get("readOnly")))

    if not under(str(staging), writable=True):
        raise ValueError(f"the Kubernetes job template mounts no writable claim at {staging}'s path: mount the "
                         "model repository claim in the job at the path the server mounts it")
    for arg in args:
        path = arg.partition("=")[2] if arg.startswith("--") else arg
        if path.startswith("/") and not under(path, writable=False):
            raise ValueError(f"the Kubernetes job template mounts nothing at {path}: the job's pod could not "
                             "read it (mount its volume in the template at the same path)")


# ---- running it ----

async def run(args: list[str], staging: Path, on_line: Callable[[str], None], settings: Any,
              *, api: Api | None = None) -> int:
    """Run `python -m <args>` as a Kubernetes Job; each stdout line to `on_line`; the container's exit status.

    A failure to start, a failed or deleted Job, or a lost pod returns 1 (or the container's status) with
    an `error: ` line. On failure or cancellation (server shutdown) the Job is deleted; a finished one is
    left to its ttlSecondsAfterFinished.
    """
    template_path = getattr(settings, "kubernetes_job_template", None)
    if not template_path:
        on_line("error: runner 'kubernetes' needs --kubernetes-job-template (the slimserve-job-template "
                "ConfigMap of deploy/components/kubernetes-jobs)")
        return 1
    try:
        template = load_template(Path(template_path))
        api = api or Api.in_cluster()
        name = job_name(Path(staging))
        owner = await asyncio.to_thread(_owner, api)
        job = render_job(template, args, name, api.namespace, owner, Path(staging))
    except (ValueError, KubeError) as exc:
        on_line(f"error: {exc}")
        return 1

    said_error = False

    def relay(line: str) -> None:
        nonlocal said_error
        said_error = said_error or line.startswith("error: ")
        on_line(line)

    posted = succeeded = False
    try:
        posted = True  # before the call: a POST that timed out may still have created the Job
        await asyncio.to_thread(api.request, "POST", f"/apis/batch/v1/namespaces/{api.namespace}/jobs", job)
        on_line(f"step: Kubernetes Job {name} created")
        container = job["spec"]["template"]["spec"]["containers"][0]["name"]
        pod = await _wait_for_pod(api, name, container, on_line)
        code, reason = await _follow(api, name, pod, container, relay)
        succeeded = code == 0
        if code != 0 and (reason or not said_error):
            on_line(f"error: the Kubernetes Job {name} failed: {reason or f'exit status {code}'}")
        return code
    except _Failed as exc:
        on_line(f"error: {exc}")
        return 1
    except KubeError as exc:
        on_line(f"error: Kubernetes API: {exc}")
        return 1
    finally:
        if posted and not succeeded:  # a Job that was never created: the DELETE's 404 is ignored
            # Shielded: on server shutdown this runs inside the cancellation and must still reach the API.
            await asyncio.shield(asyncio.to_thread(_delete, api, name))


def _owner(api: Api) -> dict[str, str] | None:
    """The server's own pod, as the Job's owner: deleting the pod (rollout, eviction) deletes the Job."""
    pod = os.environ.get("HOSTNAME", "")  # a Deployment's pod name
    if not pod:
        return None
    try:
        found = api.request("GET", f"/api/v1/namespaces/{api.namespace}/pods/{pod}")
    except KubeError as exc:
        log.warning("Kubernetes job: could not read this server's pod %s (%s); the Job gets no owner", pod, exc)
        return None
    return {"name": found["metadata"]["name"], "uid": found["metadata"]["uid"]}


def _delete(api: Api, name: str) -> None:
    try:
        api.request("DELETE", f"/apis/batch/v1/namespaces/{api.namespace}/jobs/{name}",
                    {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
    except KubeError as exc:
        if exc.status != 404:
            log.warning("Kubernetes job %s: could not delete it (%s)", name, exc)


def _job_failure(api: Api, name: str) -> str | None:
    """Why the Job failed (its Failed condition), or None while it has not; raises _Failed when it is gone."""
    try:
        job = api.request("GET", f"/apis/batch/v1/namespaces/{api.namespace}/jobs/{name}")
    except KubeError as exc:
        if exc.status == 404:
            raise _Failed(f"the Kubernetes Job {name} was deleted") from None
        raise
    for condition in job.get("status", {}).get("conditions", []):
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return f"{condition.get('reason', 'Failed')}: {condition.get('message', '')}".rstrip(": ")
    return None


def _container_status(pod: dict, container: str) -> dict:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    return next((s for s in statuses if s.get("name") == container), {})


async def _wait_for_pod(api: Api, name: str, container: str, on_line: Callable[[str], None]) -> str:
    """The Job's pod once its container has started (or ended); _Failed if it never will."""
    last_step = ""
    while True:
        failure = await asyncio.to_thread(_job_failure, api, name)
        if failure:
            raise _Failed(f"the Kubernetes Job {name} failed before its pod ran: {failure}")
        pods = (await asyncio.to_thread(api.request, "GET", f"/api/v1/namespaces/{api.namespace}/pods",
                                        None, {"labelSelector": f"job-name={name}"})).get("items", [])
        step = "waiting for the Job's pod"
        if pods:
            pod, status = pods[0]["metadata"]["name"], pods[0].get("status", {})
            state = _container_status(pods[0], container).get("state", {})
            if "running" in state or "terminated" in state or status.get("phase") in ("Succeeded", "Failed"):
                return pod
            waiting = state.get("waiting", {})
            if waiting.get("reason") in FATAL_WAITING:
                raise _Failed(f"pod {pod}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": "))
            scheduled = next((c for c in status.get("conditions", []) if c.get("type") == "PodScheduled"), {})
            if scheduled.get("status") == "False":
                step = f"waiting for a node: {scheduled.get('message') or scheduled.get('reason', '')}"
            else:
                step = f"starting pod {pod}" + (f" ({waiting['reason']})" if waiting.get("reason") else "")
        if step != last_step:
            on_line(f"step: {step}"[:200])
            last_step = step
        await asyncio.sleep(POLL_SECONDS)


class _Cursor:
    """How many log lines were passed on. A reopened stream starts again at the log's first line, so the
    lines already passed on are skipped by count. (Not by timestamp: with timestamps=true the kubelet puts
    one inside every line longer than the runtime's 8-16 KiB split, which would break a long `result:` line,
    kubernetes#77603. Counting holds until the kubelet rotates the log, at 10 MiB by default; a job prints
    far less.)"""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.seen = 0

    async def read(self, api: Api, path: str, container: str, follow: bool) -> None:
        skip = self.seen
        async for line in _lines(api, path, {"container": container, "follow": str(follow).lower()}):
            if skip:
                skip -= 1
                continue
            self.seen += 1
            self.on_line(line)


async def _follow(api: Api, name: str, pod: str, container: str,
                  on_line: Callable[[str], None]) -> tuple[int, str]:
    """Stream the container's log to `on_line` until it ends; (exit status, reason when not plain)."""
    cursor = _Cursor(on_line)
    path = f"/api/v1/namespaces/{api.namespace}/pods/{pod}/log"
    while True:
        await cursor.read(api, path, container, follow=True)
        try:
            found = await asyncio.to_thread(api.request, "GET", f"/api/v1/namespaces/{api.namespace}/pods/{pod}")
        except KubeError as exc:
            if exc.status == 404:
                raise _Failed(f"the Kubernetes Job {name}'s pod {pod} was deleted while it ran") from None
            raise
        ended = _container_status(found, container).get("state", {}).get("terminated")
        phase = found.get("status", {}).get("phase")
        if ended or phase in ("Succeeded", "Failed"):
            # A stream that dropped just before the end missed the last lines (the result): read them now.
            await cursor.read(api, path, container, follow=False)
        if ended:
            code = int(ended.get("exitCode", 1))
            reason = ended.get("reason", "")
            if code != 0:
                failure = await asyncio.to_thread(_job_failure, api, name)
                detail = failure or (reason if reason not in ("Error", "Completed") else "")
                return code, f"{detail} (exit status {code})" if detail else ""
            return 0, ""
        if phase in ("Succeeded", "Failed"):  # evicted or lost before a status was written
            return (0, "") if phase == "Succeeded" else (1, found["status"].get("reason") or "the pod failed")
        # Still running: the stream ended early (API server restart, idle proxy). Open it again.
        await asyncio.sleep(POLL_SECONDS)


async def _lines(api: Api, path: str, query: dict[str, str]) -> AsyncIterator[str]:
    """Lines of a streamed GET, read in a daemon thread (a blocked read must not hold up shutdown)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
    opened: list[_Stream] = []
    closed = threading.Event()

    def put(item: str | BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server stopped): nobody is reading
            pass

    def pump() -> None:
        stream = None
        try:
            stream = api.open_stream(path, query)
            opened.append(stream)
            if closed.is_set():
                stream.interrupt()
            for line in stream.lines():
                put(line)
        except Exception as exc:  # any end of the stream is reported, never raised in a thread
            if not closed.is_set():  # else: our own interrupt
                put(exc)
        finally:
            if stream is not None:
                stream.close()
            put(None)

    threading.Thread(target=pump, name="kubejob-log", daemon=True).start()
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, KubeError) and item.status in (401, 403):
                raise item  # no right to read the log (RBAC): retrying will not help
            if isinstance(item, BaseException):  # dropped, or refused (pod gone): the caller checks the pod
                log.info("Kubernetes job log stream ended: %s", item)
                continue
            yield item
    finally:
        closed.set()
        for stream in opened:
            stream.interrupt()
