"""Peer benchmark: KServe's Python model server and slimserve on the same ONNX files, client and machine.

    python benchmarks/peer_kserve.py                                   # the tiny MLP only
    python benchmarks/peer_kserve.py --minilm-repository /tmp/full/repo --json /tmp/peer.json

Both servers serve the very same ONNX files (hard links, or copies across file systems) from one
temporary Triton-layout repository, `<model>/1/model.onnx` without a manifest: `mlp`, a 784-256-10 MLP
(FP32, seeded weights) written here with onnx.helper, and, with `--minilm-repository DIR` (a built
repository holding `minilm/teacher/model.onnx` and `minilm/int8/model.onnx`), `minilm_fp32` and
`minilm_int8`, measured at 16 and 128 tokens (INT64 input_ids and attention_mask; token_type_ids zeros if
the graph has one). Without it the MiniLM points are skipped with a note.

- KServe: its Python model server (`kserve.ModelServer`, v2 gRPC) running benchmarks/kserve_onnx_server.py
  in its own venv (`--kserve-venv`, created with `python3.11 -m venv` and the pins in KSERVE_PINS from
  PyPI when missing): one `kserve.Model` per file, ONNX Runtime sessions with slimserve's options and
  `--intra-op-threads` (default: the usable cores, as ONNX Runtime's own default uses every core), KServe's
  defaults otherwise (1 worker, gRPC max_threads 4), per-request latency logging off and log level WARNING
  (its defaults log every request).
- slimserve: `python -m server` with its defaults (workers = usable cores, 1 intra-op thread, a lone run
  on every usable core, dynamic batching on), loopback and free ports.
- Client, the same for both: tritonclient.grpc in this process, one InferenceServerClient per thread,
  batch-1 requests, concurrency 1/4/16 (`--levels`); per point the two sides take `--rounds` turns each,
  alternating (who goes first alternates too), each turn `--warmup` seconds untimed, then up to
  `--seconds`/`--rounds` seconds or `--max-requests`/`--rounds` requests, whichever comes first; a side's
  turns are pooled. Throughput (answers inside the timed window / its length) and p50/p99 are
  client-side; server CPU per request is the server process's CPU time (and its children's, psutil)
  over the timed phase / the requests answered in it. Both servers stay up for the whole run (the idle
  one only waits; slimserve also polls its repository every few seconds). Client and servers share the
  machine's cores, so this is a same-box comparison, not either server's capacity on its own cores.
- `--kserve-predict thread` runs KServe's predict in its event loop's executor instead of on the loop
  (see benchmarks/kserve_onnx_server.py), so KServe can overlap runs as slimserve's workers do.

Printed: one markdown table per model point with the ratios (req/s: slimserve / KServe; p50: KServe /
slimserve; above 1 means slimserve is ahead in both), header lines with the CPU model, each side's ONNX
Runtime version and settings, and KServe's version. `--json PATH` writes the same results as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tritonclient.grpc as triton  # noqa: E402
from server_process import ServerProcess, start_server  # noqa: E402

from clients.report import fmt, percentiles, table  # noqa: E402
from modelrepo.host import cpu_model  # noqa: E402
from server.settings import parse_settings  # noqa: E402

__all__ = ["main"]

# What installed here (2026-12-03, python3.11 -m venv, `pip install kserve onnxruntime==1.31.1 numpy` from PyPI,
# ~40-50 s); grpcio and protobuf pinned too, as they carry every request.
KSERVE_PINS = ("kserve==0.21.0", "onnxruntime==1.31.1", "numpy==2.4.6", "grpcio==1.85.3", "protobuf==6.33.6")
KSERVE_SERVER = Path(__file__).resolve().parent / "kserve_onnx_server.py"
MLP_SHAPE = (784, 256, 10)
MINILM_FILES = {"minilm_fp32": "teacher", "minilm_int8": "int8"}
# Set by Ctrl-C / SIGTERM. A blocking gRPC call can swallow the KeyboardInterrupt the handler raises, so the
# loops also check this and the main loop re-raises.
STOP = threading.Event()


def _on_signal(signum: int, _frame: Any) -> None:
    STOP.set()
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------- the KServe venv

def venv_versions(python: Path) -> dict[str, str] | None:
    """Installed versions of the pinned distributions in the venv, or None when one is missing."""
    names = [pin.split("==")[0] for pin in KSERVE_PINS]
    code = ("import importlib.metadata as m, json, sys\n"
            f"print(json.dumps({{n: m.version(n) for n in {names!r}}}))")
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_kserve_venv(venv: Path, base_python: str) -> tuple[Path, dict[str, str], float]:
    """The venv's python, its pinned versions, and the seconds spent creating/installing (0 when it was ready)."""
    python = venv / "bin" / "python"
    wanted = dict(pin.split("==") for pin in KSERVE_PINS)
    versions = venv_versions(python) if python.exists() else None
    if versions == wanted:
        return python, versions, 0.0
    started = time.perf_counter()
    if not python.exists():
        print(f"# creating the KServe venv: {base_python} -m venv {venv}", flush=True)
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    print(f"# installing into {venv}: pip install {' '.join(KSERVE_PINS)} (about 40 s here)", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-qq", "--disable-pip-version-check", *KSERVE_PINS],
                   check=True)
    versions = venv_versions(python)
    if versions != wanted:
        raise RuntimeError(f"{venv}: installed {versions}, wanted {wanted}")
    return python, versions, time.perf_counter() - started


# --------------------------------------------------------------------------------------------- the repository

def mlp_model(path: Path) -> None:
    """784-256-10 Gemm/Relu/Gemm, FP32, seeded weights, dynamic batch axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    n_in, n_hidden, n_out = MLP_SHAPE
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)
               for name, shape in (("w1", (n_in, n_hidden)), ("b1", (n_hidden,)), ("w2", (n_hidden, n_out)),
                                   ("b2", (n_out,)))]
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden"]), helper.make_node("Relu", ["hidden"], ["relu"]),
             helper.make_node("Gemm", ["relu", "w2", "b2"], ["logits"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def link_folder(source: Path, target: Path) -> None:
    """Every file of `source` (model.onnx and any external-data file) into `target`, hard-linked where possible."""
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file():
            try:
                os.link(item, target / item.name)
            except OSError:
                shutil.copyfile(item, target / item.name)


def graph_inputs(path: Path) -> list[tuple[str, int]]:
    """(name, ONNX element type) of the graph's real inputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input if i.name not in initializers]


def request_arrays(path: Path, tokens: int | None) -> dict[str, np.ndarray]:
    """One batch-1 request for the file: random FP32 features, or `tokens` token ids with a full mask."""
    rng = np.random.default_rng(1)
    if tokens is None:
        return {name: rng.standard_normal((1, MLP_SHAPE[0])).astype(np.float32) for name, _ in graph_inputs(path)}
    out = {}
    for name, _ in graph_inputs(path):
        if name == "input_ids":
            ids = rng.integers(1000, 30000, size=(1, tokens), dtype=np.int64)
            ids[0, 0], ids[0, -1] = 101, 102  # [CLS] ... [SEP]
            out[name] = ids
        elif name == "attention_mask":
            out[name] = np.ones((1, tokens), dtype=np.int64)
        else:  # token_type_ids
            out[name] = np.zeros((1, tokens), dtype=np.int64)
    return out


# --------------------------------------------------------------------------------------------- the servers

@dataclass
class KServeProcess:
    process: subprocess.Popen
    grpc_port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group (it runs in its own session), SIGKILL after `timeout`."""
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pump(stream: Any, lines: list[str]) -> None:
    threading.Thread(target=lambda: lines.extend(stream), daemon=True).start()


def start_kserve(python: Path, models: dict[str, Path], intra_op_threads: int, predict: str,
                 timeout: float = 300.0) -> KServeProcess:
    grpc_port, http_port = free_port(), free_port()
    cmd = [str(python), str(KSERVE_SERVER), *(f"--onnx={name}={path}" for name, path in models.items()),
           f"--intra-op-threads={intra_op_threads}", f"--predict-mode={predict}", "--host=127.0.0.1",
           f"--grpc_port={grpc_port}", f"--http_port={http_port}", "--enable_latency_logging=false"]
    env = {**os.environ, "KSERVE_LOGLEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True, cwd=tempfile.gettempdir())
    server = KServeProcess(process, grpc_port)
    pump(process.stdout, server.lines)
    client = triton.InferenceServerClient(server.url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not STOP.is_set():
            if process.poll() is not None:
                break
            try:
                if all(client.is_model_ready(name) for name in models):
                    return server
            except triton.InferenceServerException:  # not listening yet
                pass
            time.sleep(0.2)
    except BaseException:  # Ctrl-C while it loads: it runs in its own session, so stop it here
        server.stop()
        raise
    finally:
        client.close()
    server.stop()
    if STOP.is_set():
        raise KeyboardInterrupt
    raise RuntimeError("KServe did not start:\n" + "".join(server.lines[-40:]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live children."""
    try:
        process = psutil.Process(pid)
        total = 0.0
        for p in [process, *process.children(recursive=True)]:
            try:
                times = p.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return float("nan")


# --------------------------------------------------------------------------------------------- the client

@dataclass
class Measured:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_request: float
    client_cpu_cores: float
    errors: dict[str, int]
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # pooled across rounds, not written out


def written(m: Measured) -> dict[str, Any]:
    """The JSON form of a side's figures (without the raw latencies)."""
    out = asdict(m)
    out.pop("latencies_ms")
    return out


def pool(rounds: list[Measured]) -> Measured:
    """One figure per side from its rounds: answers in the timed windows over their total length,
    percentiles over every latency, CPU per request over every request."""
    requests = sum(m.requests for m in rounds)
    seconds = sum(m.seconds for m in rounds)
    latencies = [x for m in rounds for x in m.latencies_ms]
    p50, p99 = percentiles(latencies, (50, 99))
    errors: dict[str, int] = {}
    for m in rounds:
        for key, n in m.errors.items():
            errors[key] = errors.get(key, 0) + n
    return Measured(requests, seconds, sum(m.rps * m.seconds for m in rounds) / seconds if seconds else float("nan"),
                    p50, p99, sum(m.server_cpu_ms_per_request * m.requests for m in rounds) / max(1, requests),
                    sum(m.client_cpu_cores * m.seconds for m in rounds) / seconds if seconds else float("nan"),
                    errors, latencies)


def drive(url: str, model: str, arrays: dict[str, np.ndarray], concurrency: int, seconds: float,
          max_requests: int, warmup: float, pid: int) -> Measured:
    """`concurrency` threads, each with its own client, sending batch-1 requests back to back."""
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32"}
    clients = [triton.InferenceServerClient(url) for _ in range(concurrency)]
    wires = []
    for _ in clients:
        wire = []
        for name, array in arrays.items():
            tensor = triton.InferInput(name, list(array.shape), datatypes[array.dtype])
            tensor.set_data_from_numpy(array)
            wire.append(tensor)
        wires.append(wire)
    done: list[list[tuple[float, float]]] = [[] for _ in clients]  # (sent, answered) per thread
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def loop(i: int, deadline: float, counter: Any, limit: int | None) -> None:
        client, wire, out = clients[i], wires[i], done[i]
        while time.perf_counter() < deadline and not STOP.is_set() and (limit is None or next(counter) < limit):
            began = time.perf_counter()
            try:
                client.infer(model, wire, client_timeout=60)
            except Exception as exc:  # counted and printed: the benchmark must finish
                if limit is not None:
                    with lock:
                        key = type(exc).__name__ + (f" {exc.status()}" if hasattr(exc, "status") else "")
                        errors[key] = errors.get(key, 0) + 1
                continue
            if limit is not None:
                out.append((began, time.perf_counter()))

    def phase(length: float, limit: int | None) -> tuple[float, float, float]:
        """Start, deadline and end (the last in-flight answer) of one bounded phase."""
        counter = itertools.count()
        started = time.perf_counter()
        deadline = started + length
        threads = [threading.Thread(target=loop, args=(i, deadline, counter, limit), daemon=True)
                   for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return started, deadline, time.perf_counter()

    try:
        if warmup > 0:
            phase(warmup, None)
        for out in done:
            out.clear()
        cpu0, client0 = cpu_seconds(pid), time.process_time()
        started, deadline, ended = phase(seconds, max_requests)
        cpu, client_cpu = cpu_seconds(pid) - cpu0, time.process_time() - client0
    finally:
        for client in clients:
            client.close()
    pairs = [pair for out in done for pair in out]
    # Throughput counts the answers inside the window (start to deadline, or to the last answer when
    # --max-requests ended it first), so the drain of the requests still in flight at the deadline
    # (up to one latency, long at 128 tokens and c=16) does not dilute it. Latency percentiles and
    # server CPU per request cover every answered request.
    window_end = min(deadline, max((b for _, b in pairs), default=deadline))
    in_window = sum(1 for _, b in pairs if b <= window_end)
    window = window_end - started
    latencies = [(b - a) * 1e3 for a, b in pairs]
    p50, p99 = percentiles(latencies, (50, 99))
    return Measured(len(pairs), window, in_window / window if window > 0 else float("nan"), p50, p99,
                    cpu / len(pairs) * 1e3 if pairs else float("nan"), client_cpu / (ended - started), errors,
                    latencies)


def same_answer(urls: dict[str, str], model: str, arrays: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between the two sides' outputs for one request."""
    results = {}
    for side, url in urls.items():
        client = triton.InferenceServerClient(url)
        try:
            wire = []
            for name, array in arrays.items():
                tensor = triton.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
                tensor.set_data_from_numpy(array)
                wire.append(tensor)
            response = client.infer(model, wire, client_timeout=60)
            results[side] = {o.name: response.as_numpy(o.name) for o in response.get_response().outputs}
        finally:
            client.close()
    a, b = results.values()
    if a.keys() != b.keys():
        raise RuntimeError(f"{model}: outputs differ by name: {sorted(a)} vs {sorted(b)}")
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)


# --------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kserve-venv", type=Path, default=Path("/tmp/slimserve-kserve-venv"),
                        help="venv for KServe, created with the pins when missing (default %(default)s)")
    parser.add_argument("--base-python", default="python3.11", help="python that creates the venv (default %(default)s)")
    parser.add_argument("--minilm-repository", type=Path, default=None,
                        help="built repository with minilm/teacher/model.onnx and minilm/int8/model.onnx")
    parser.add_argument("--models", default="mlp,minilm_int8,minilm_fp32",
                        help="models to measure (default %(default)s)")
    parser.add_argument("--tokens", default="16,128", help="MiniLM sequence lengths (default %(default)s)")
    parser.add_argument("--levels", default="1,4,16", help="concurrency levels (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per point and side (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns per point and side the seconds are split into, the sides alternating, pooled: "
                             "a noisy machine's drift then hits both sides alike (default %(default)s)")
    parser.add_argument("--max-requests", type=int, default=100_000,
                        help="timed requests per point and side at most (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds first (default %(default)s)")
    parser.add_argument("--intra-op-threads", type=int, default=None,
                        help="KServe sessions' intra-op threads (default: the usable cores, ONNX Runtime's own default)")
    parser.add_argument("--kserve-predict", choices=("sync", "thread"), default="sync",
                        help="sync: predict on KServe's event loop, as its own servers do; thread: in its executor")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        levels = sorted({int(c) for c in args.levels.split(",") if c})
        tokens = [int(t) for t in args.tokens.split(",") if t]
    except ValueError:
        parser.error("--levels and --tokens take comma-separated integers")
    wanted = [m for m in args.models.split(",") if m]
    unknown = set(wanted) - {"mlp", *MINILM_FILES}
    if (unknown or not levels or levels[0] < 1 or args.seconds <= 0 or args.max_requests < 1 or not tokens
            or args.rounds < 1):
        parser.error(f"check --models ({', '.join(sorted(unknown)) or 'ok'}), --levels, --tokens, --seconds, "
                     "--max-requests, --rounds")
    signal.signal(signal.SIGINT, _on_signal)  # either way the finally blocks run and stop both servers
    signal.signal(signal.SIGTERM, _on_signal)

    import onnxruntime

    settings = parse_settings([], dict(os.environ))
    intra = len(os.sched_getaffinity(0)) if args.intra_op_threads is None else args.intra_op_threads
    try:
        python, versions, install_seconds = ensure_kserve_venv(args.kserve_venv, args.base_python)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"error: cannot prepare the KServe venv {args.kserve_venv}: {exc}", file=sys.stderr)
        return 1
    if install_seconds:
        print(f"# KServe venv ready in {install_seconds:.0f} s", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="peer_kserve_"))
    repo = workdir / "repo"
    points: list[tuple[str, int | None]] = []
    notes = []
    files: dict[str, Path] = {}
    if "mlp" in wanted:
        mlp_model(repo / "mlp" / "1" / "model.onnx")
        files["mlp"] = repo / "mlp" / "1" / "model.onnx"
        points.append(("mlp", None))
    for name, variant in MINILM_FILES.items():
        if name not in wanted:
            continue
        source = args.minilm_repository / "minilm" / variant if args.minilm_repository else None
        if source is None or not (source / "model.onnx").is_file():
            notes.append(f"{name}: skipped, no {source / 'model.onnx' if source else '--minilm-repository'}")
            continue
        link_folder(source, repo / name / "1")
        files[name] = repo / name / "1" / "model.onnx"
        points.extend((name, t) for t in tokens)
    for note in notes:
        print(f"# note: {note}", flush=True)
    if not points:
        print("nothing to measure", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 1

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    kserve: KServeProcess | None = None
    slim: ServerProcess | None = None
    slim_children: list[psutil.Process] = []
    results: list[dict[str, Any]] = []
    try:
        kserve = start_kserve(python, files, intra, args.kserve_predict)
        slim = start_server(repo, "--log-level", "WARNING", timeout=600)
        slim_children = psutil.Process(slim.process.pid).children(recursive=True)
        kserve_lines = [line.strip() for line in kserve.lines if line.startswith(("kserve ", "sessions: "))]
        header = [
            f"# {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; CPU: {cpu_model()}; {cores} usable cores; "
            f"client: tritonclient.grpc, one client per thread, batch 1, {args.seconds:g} s or {args.max_requests} "
            f"requests per point and side in {args.rounds} alternating turns, each after {args.warmup:g} s warm-up; client and servers on the same cores",
            f"# KServe {versions['kserve']} (venv {args.kserve_venv}, pins {' '.join(KSERVE_PINS)}), onnxruntime "
            f"{versions['onnxruntime']}: benchmarks/kserve_onnx_server.py, predict {args.kserve_predict}, "
            f"latency logging off, log level WARNING",
            *(f"#   {line}" for line in kserve_lines),
            f"# slimserve (python -m server, defaults), onnxruntime {onnxruntime.__version__}: --workers "
            f"{settings.workers}, --intra-op-threads {settings.intra_op_threads}, --lone-run-threads "
            f"{settings.lone_run_threads}, batching "
            f"{'on' if settings.batching else 'off'} (max batch {settings.max_batch_size}, queue delay "
            f"{settings.max_queue_delay_us} us), inline compute under {settings.inline_compute_us} us; sessions: "
            f"modelrepo/session.py (1 inter-op thread, sequential, ORT_ENABLE_ALL, spinning off, denormals as "
            f"zero, SkipLayerNormFusion disabled)",
            "# ratios: req/s slimserve / KServe; p50 KServe / slimserve (above 1: slimserve ahead); CPU ms/req = server "
            "process (+children) CPU per request; client CPU = cores this process used while driving (a client near "
            f"{cores} cores, or near 1 core of Python, caps req/s for both sides)",
        ]
        print("\n".join(header), flush=True)
        urls = {"kserve": kserve.url, "slimserve": slim.url}
        pids = {"kserve": kserve.process.pid, "slimserve": slim.process.pid}
        for model, length in points:
            arrays = request_arrays(files[model], length)
            diff = same_answer(urls, model, arrays)
            title = f"{model}" + (f", {length} tokens" if length else f" {'-'.join(map(str, MLP_SHAPE))}")
            rows = []
            for i, level in enumerate(levels):
                turns: dict[str, list[Measured]] = {"kserve": [], "slimserve": []}
                for r in range(args.rounds):
                    order = ("kserve", "slimserve") if (i + r) % 2 == 0 else ("slimserve", "kserve")
                    for side in order:
                        turns[side].append(drive(urls[side], model, arrays, level, args.seconds / args.rounds,
                                                 max(1, args.max_requests // args.rounds), args.warmup, pids[side]))
                    if STOP.is_set():
                        raise KeyboardInterrupt
                got = {side: pool(measured) for side, measured in turns.items()}
                for side, process in (("KServe", kserve.process), ("slimserve", slim.process)):
                    if process.poll() is not None:
                        raise RuntimeError(f"{side} exited (code {process.returncode}) during {title} c={level}")
                k, s = got["kserve"], got["slimserve"]
                results.append({"model": model, "tokens": length, "concurrency": level, "max_abs_diff": diff,
                                "kserve": written(k), "slimserve": written(s)})
                errors = {f"K {key}": n for key, n in k.errors.items()} | {f"s {key}": n for key, n in s.errors.items()}
                rows.append([str(level), f"{k.rps:,.0f}", f"{s.rps:,.0f}", fmt(s.rps / k.rps if k.rps else None, 2),
                             fmt(k.p50_ms), fmt(k.p99_ms), fmt(s.p50_ms), fmt(s.p99_ms),
                             fmt(k.p50_ms / s.p50_ms if s.p50_ms else None, 2), fmt(k.server_cpu_ms_per_request),
                             fmt(s.server_cpu_ms_per_request), f"{k.client_cpu_cores:.2f}/{s.client_cpu_cores:.2f}",
                             f"{k.requests}/{s.requests}",
                             ", ".join(f"{key} {n}" for key, n in sorted(errors.items())) or "0"])
                print(f"#   {title} c={level}: KServe {k.rps:,.0f} req/s, slimserve {s.rps:,.0f} req/s",
                      file=sys.stderr, flush=True)
            print(f"\n### {title} (outputs agree to {diff:.2g})\n")
            print(table(["concurrency", "KServe req/s", "slimserve req/s", "req/s ratio", "KServe p50 ms",
                         "KServe p99 ms", "slimserve p50 ms", "slimserve p99 ms", "p50 ratio",
                         "KServe CPU ms/req", "slimserve CPU ms/req", "client CPU cores K/s",
                         "requests K/s", "errors"], rows), flush=True)
        if args.json:
            args.json.write_text(json.dumps({
                "header": header, "cpu": cpu_model(), "cores": cores, "kserve_pins": list(KSERVE_PINS),
                "kserve_versions": versions, "kserve_settings": kserve_lines,
                "kserve": {"predict": args.kserve_predict, "intra_op_threads": intra, "workers": 1},
                "slimserve": {"onnxruntime": onnxruntime.__version__, "workers": settings.workers,
                              "intra_op_threads": settings.intra_op_threads,
                              "lone_run_threads": settings.lone_run_threads, "batching": settings.batching},
                "seconds": args.seconds, "max_requests": args.max_requests, "warmup": args.warmup,
                "notes": notes, "points": results}, indent=2) + "\n")
            print(f"\n# results written to {args.json}")
    except RuntimeError as exc:
        print(f"error: {' '.join(str(exc).split())[:2000]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping both servers", file=sys.stderr)
        return 130
    finally:
        if slim is not None:
            slim.stop()
            for child in slim_children:  # anything the server left behind
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
        if kserve is not None:
            kserve.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
