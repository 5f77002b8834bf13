"""What the server adds: ONNX Runtime in-process vs. the same model through `python -m server` over gRPC.

Build a repository first (`python -m compression.build` writes ./model_repository with model `digits`), then:

    python benchmarks/server_overhead.py [--repository model_repository] [--model digits] [--requests 2000]

Per variant, at batch 1 and concurrency 1: in-process ONNX Runtime p50/p95 (session options as the server's,
1 intra-op and 1 inter-op thread), then p50/p95 through a freshly started server subprocess (`--intra-op-threads
1`) via tritonclient.grpc after a warm-up, the difference (the server's overhead, gRPC and client stack included),
the server's own view from its metrics (end-to-end in the server, and the ONNX Runtime run), and the client
process's CPU time per request. Client and server share this machine's cores, so the client's CPU cost is
part of what the "through the server" figure measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tritonclient.grpc as triton  # noqa: E402
from server_process import ServerProcess, start_server  # noqa: E402
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype  # noqa: E402

from clients.errors import MetricsError  # noqa: E402
from clients.metrics import MetricsSnapshot, fetch_metrics  # noqa: E402
from clients.report import fmt, percentiles, table  # noqa: E402
from modelrepo.arrays import read_feeds  # noqa: E402
from modelrepo.host import cpu_model  # noqa: E402
from modelrepo.session import open_session  # noqa: E402

__all__ = ["main"]

THREADS = "intra_op_num_threads=1, inter_op_num_threads=1, ORT_SEQUENTIAL, ORT_ENABLE_ALL, intra-op spinning off"


@dataclass
class Timing:
    """Latencies (ms) of one bounded loop, and the client's CPU seconds spent in it."""

    latencies_ms: list[float]
    cpu_seconds: float
    seconds: float

    @property
    def p50(self) -> float:
        return percentiles(self.latencies_ms, (50,))[0]

    @property
    def p95(self) -> float:
        return percentiles(self.latencies_ms, (95,))[0]

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_seconds / len(self.latencies_ms) * 1000 if self.latencies_ms else float("nan")


@dataclass
class Row:
    variant: str
    local: Timing
    remote: Timing | None = None
    server_request_ms: float | None = None
    server_compute_ms: float | None = None


def timed_loop(call: Callable[[], Any], requests: int, max_seconds: float, warmup: int) -> Timing:
    """`warmup` untimed calls, then up to `requests` timed calls or `max_seconds`, whichever ends first."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    deadline = start + max_seconds
    while len(latencies) < requests:
        began = time.perf_counter_ns()
        call()
        ended = time.perf_counter_ns()
        latencies.append((ended - began) / 1e6)
        if ended / 1e9 >= deadline:
            break
    return Timing(latencies, time.process_time() - cpu0, time.perf_counter() - start)


def sample_inputs(folder: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """Row 0 of heldout.npz (one array per input) when there is one; otherwise random data."""
    specs = manifest["inputs"]
    heldout = folder / manifest.get("data", {}).get("heldout_file", "heldout.npz")
    if heldout.is_file():
        feeds, _ = read_feeds(heldout, [s["name"] for s in specs])
        return {s["name"]: np.ascontiguousarray(feeds[s["name"]][:1].astype(triton_to_np_dtype(s["datatype"])))
                for s in specs}
    rng = np.random.default_rng(0)
    out = {}
    for spec in specs:
        shape = [1 if d < 0 else d for d in spec["shape"]]
        out[spec["name"]] = rng.standard_normal(shape).astype(triton_to_np_dtype(spec["datatype"]))
    return out


def server_means(before: MetricsSnapshot, after: MetricsSnapshot, model: str, variant: str) -> tuple[float | None, float | None]:
    """Mean ms per request of the server's end-to-end and compute histograms between two scrapes."""
    out: list[float | None] = []
    for name in ("slimserve_request_duration_seconds", "slimserve_compute_duration_seconds"):
        a = after.histogram(name, model=model, variant=variant)
        b = before.histogram(name, model=model, variant=variant) or (0.0, 0.0)
        out.append((a[0] - b[0]) / (a[1] - b[1]) * 1000 if a and a[1] > b[1] else None)
    return out[0], out[1]


def through_server(server: ServerProcess, model: str, variants: Sequence[str], inputs: dict[str, np.ndarray],
                   rows: dict[str, Row], args: argparse.Namespace) -> None:
    client = triton.InferenceServerClient(server.url)
    wire = []
    for name, array in inputs.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        wire.append(tensor)
    for variant in variants:
        def call(v: str = variant) -> None:
            client.infer(model, wire, model_version=v)

        for _ in range(args.warmup):
            call()
        try:
            before: MetricsSnapshot | None = fetch_metrics(server.metrics_url)
        except MetricsError:
            before = None
        rows[variant].remote = timed_loop(call, args.requests, args.max_seconds, warmup=0)
        if before is not None:
            try:
                after = fetch_metrics(server.metrics_url)
                rows[variant].server_request_ms, rows[variant].server_compute_ms = server_means(
                    before, after, model, variant)
            except MetricsError:
                pass
        r = rows[variant].remote
        print(f"  server     {variant:<12} p50 {r.p50:.3f} ms  p95 {r.p95:.3f} ms  ({len(r.latencies_ms)} requests, "
              f"client CPU {r.cpu_ms_per_request:.3f} ms/request)", flush=True)
    client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Build the repository first: python -m compression.build --out DIR")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="model repository root (default %(default)s)")
    parser.add_argument("--model", default="digits", help="model to measure (default %(default)s)")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per variant and side (default %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time limit per variant and side (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests first (default %(default)s)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.max_seconds <= 0 or args.warmup < 0:
        parser.error("--requests must be at least 1, --max-seconds more than 0, --warmup 0 or more")

    folder = args.repository / args.model
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {folder / 'manifest.json'} ({exc}); build the repository first: "
              f"python -m compression.build --out {args.repository}", file=sys.stderr)
        return 1
    variants = list(manifest["variants"])
    inputs = sample_inputs(folder, manifest)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"model {args.model} from {args.repository}: variants {', '.join(variants)}; batch 1, concurrency 1; "
          f"up to {args.requests} requests or {args.max_seconds:g} s per variant and side, after {args.warmup} warm-up")
    print(f"host: {cpu_model()}, {cores} usable cores; Python {platform.python_version()}, "
          f"onnxruntime {ort.__version__}")
    print(f"in-process ONNX Runtime: {THREADS}")
    print(f"server: python -m server --intra-op-threads 1 (session options as above; --workers default = "
          f"{cores} usable cores; dynamic batching on, but one request at a time never merges)")

    rows: dict[str, Row] = {}
    for variant in variants:
        sess = open_session(folder / manifest["variants"][variant]["file"], 1)  # as `--intra-op-threads 1`
        feeds = dict(inputs)
        local = timed_loop(lambda s=sess, f=feeds: s.run(None, f), args.requests, args.max_seconds, args.warmup)
        rows[variant] = Row(variant, local)
        print(f"  in-process {variant:<12} p50 {local.p50:.3f} ms  p95 {local.p95:.3f} ms  "
              f"({len(local.latencies_ms)} runs)", flush=True)
        del sess

    try:
        server = start_server(args.repository, "--intra-op-threads", "1")
    except RuntimeError as exc:
        print(f"error: {' '.join(str(exc).split())[:400]}", file=sys.stderr)
        return 1
    try:
        through_server(server, args.model, variants, inputs, rows, args)
    except InferenceServerException as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()

    headers = ["variant", "ORT p50 ms", "ORT p95 ms", "server p50 ms", "server p95 ms", "overhead p50 ms",
               "overhead p95 ms", "in-server ms (mean)", "of which ORT ms (mean)", "client CPU ms/req", "requests"]
    body = []
    for r in rows.values():
        remote = r.remote
        assert remote is not None
        body.append([
            r.variant, fmt(r.local.p50), fmt(r.local.p95), fmt(remote.p50), fmt(remote.p95),
            fmt(remote.p50 - r.local.p50), fmt(remote.p95 - r.local.p95), fmt(r.server_request_ms),
            fmt(r.server_compute_ms), fmt(remote.cpu_ms_per_request), f"{len(r.local.latencies_ms)}/{len(remote.latencies_ms)}",
        ])
    print()
    print(table(headers, body))
    print()
    print("overhead = through the server minus in-process, at the same percentile: gRPC, the server's queue and "
          "codec, and the client stack (tritonclient) together. in-server = slimserve_request_duration_seconds, "
          "ORT = slimserve_compute_duration_seconds (means over the timed requests). client CPU = this process's "
          "CPU time per request while timing the server; it competes with the server for the same cores.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
