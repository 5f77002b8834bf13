"""Capacity: requests/s per core of every variant through a real server, and the replicas a target load needs.

    python benchmarks/capacity.py --repository /tmp/cap/repo                 # digits, every variant
    python benchmarks/capacity.py --repository model_repository --target-rps 20000 --seconds 10

Starts one `python -m server` on the repository (loopback, free ports, `--workers` = the usable cores,
`--intra-op-threads 1`, batching as the server defaults) and drives it with one asyncio tritonclient
process (`tritonclient.grpc.aio`, batch-1 requests of one held-out row) at each concurrency level for
`--seconds`, after a warm-up; `--rounds N` repeats the whole sweep, interleaved, and pools the rounds.
Printed per variant and level: requests/s, requests/s per core (÷ the cores the server was given), p50
and p99 latency, the CPU the server used (in cores busy, from /proc) and requests per second of that
CPU, the client's CPU, the CPU every other process on the machine took meanwhile (a busy neighbour
makes the run unrepresentative), rows per ONNX Runtime run (dynamic batching merges queued requests)
and errors.

Replicas for `--target-rps`: ceil(target × (1 + headroom) / req/s of one pod at the highest level,
16 by default), a pod having as many cores as this machine. Client and server share this machine's
cores, so the per-pod figure is a floor for a pod whose clients run elsewhere.

Build a repository first if there is none: `python -m compression.build --out /tmp/cap/repo` (the
default `digits` model, under a minute here).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from server_process import ServerProcess, start_server  # noqa: E402

from modelrepo.arrays import read_feeds  # noqa: E402
from modelrepo.host import cpu_model  # noqa: E402

SENTENCE = "the quick brown fox jumps over the lazy dog near the river bank"  # ~16 tokens for text models
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32",
             np.dtype(np.float16): "FP16", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL"}


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads), from /proc; NaN where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent not idle (all processes), from /proc/stat; NaN without it."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest time is inside user


@dataclass
class Level:
    variant: str
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu: float = float("nan")
    client_cpu: float = 0.0
    other_cpu: float = float("nan")  # the rest of the machine: other processes competing for the cores
    rows_per_run: float = float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else float("nan")

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.latencies else float("nan")


def request_inputs(folder: Path, manifest: dict[str, Any]) -> list:
    """One batch-1 request: the first held-out row of every input, or a short sentence for text models."""
    import tritonclient.grpc.aio as aio

    if manifest.get("tokenizer"):
        tensor = aio.InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([SENTENCE.encode()], dtype=np.object_))
        return [tensor]
    names = [t["name"] for t in manifest["inputs"]]
    feeds, _ = read_feeds(folder / (manifest.get("data") or {}).get("heldout_file", "heldout.npz"), names)
    inputs = []
    for name in names:
        row = np.ascontiguousarray(feeds[name][:1])
        tensor = aio.InferInput(name, list(row.shape), DATATYPES[row.dtype])
        tensor.set_data_from_numpy(row)
        inputs.append(tensor)
    return inputs


async def _statistics(client: Any, model: str, variant: str) -> tuple[int, int]:
    stats = (await client.get_inference_statistics(model, variant, as_json=True))["model_stats"][0]
    return int(stats.get("execution_count", 0)), int(stats.get("inference_count", 0))


async def measure(server: ServerProcess, model: str, variant: str, inputs: list, concurrency: int, seconds: float,
                  warmup: float) -> Level:
    """Warm up, then `concurrency` callers each sending one request after another for `seconds`."""
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(server.url)
    level = Level(variant, concurrency)
    try:
        async def caller(deadline: float, record: bool) -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    await client.infer(model, inputs, model_version=variant)
                except Exception as exc:  # counted and printed: a benchmark must finish
                    if record:
                        key = getattr(exc, "status", lambda: None)() or type(exc).__name__
                        level.errors[key] = level.errors.get(key, 0) + 1
                    continue
                if record:
                    level.latencies.append(time.perf_counter() - began)

        warm_until = time.perf_counter() + warmup
        await asyncio.gather(*(caller(warm_until, False) for _ in range(concurrency)))
        runs_before, rows_before = await _statistics(client, model, variant)
        server_before, client_before = process_cpu_seconds(server.process.pid), time.process_time()
        machine_before = machine_busy_seconds()
        started = time.perf_counter()
        await asyncio.gather(*(caller(started + seconds, True) for _ in range(concurrency)))
        level.seconds = time.perf_counter() - started
        level.server_cpu = (process_cpu_seconds(server.process.pid) - server_before) / level.seconds
        level.client_cpu = (time.process_time() - client_before) / level.seconds
        machine = (machine_busy_seconds() - machine_before) / level.seconds
        level.other_cpu = max(0.0, machine - level.server_cpu - level.client_cpu)
        runs_after, rows_after = await _statistics(client, model, variant)
        runs = runs_after - runs_before
        level.rows_per_run = (rows_after - rows_before) / runs if runs else float("nan")
    finally:
        await client.close()
    return level


def pooled(levels: list[Level]) -> Level:
    """One cell measured in several rounds: requests and seconds added up, latencies pooled, CPU time-weighted."""
    out = Level(levels[0].variant, levels[0].concurrency)
    out.seconds = sum(lv.seconds for lv in levels)
    for lv in levels:
        out.latencies.extend(lv.latencies)
        for key, n in lv.errors.items():
            out.errors[key] = out.errors.get(key, 0) + n
    for name in ("server_cpu", "client_cpu", "other_cpu", "rows_per_run"):
        setattr(out, name, sum(getattr(lv, name) * lv.seconds for lv in levels) / out.seconds)
    return out


def table(levels: list[Level], cores: int) -> str:
    head = ("| variant | concurrency | req/s | req/s per core | p50 ms | p99 ms | server CPU (cores) "
            "| req per server CPU-second | client CPU (cores) | other CPU (cores) | rows per run | errors |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for lv in levels:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(lv.errors.items())) or "0"
        lines.append(f"| {lv.variant} | {lv.concurrency} | {lv.rps:,.0f} | {lv.rps / cores:,.0f} | "
                     f"{lv.percentile(50):.3f} | {lv.percentile(99):.3f} | {lv.server_cpu:.2f} | "
                     f"{lv.rps / lv.server_cpu if lv.server_cpu > 0 else float('nan'):,.0f} | {lv.client_cpu:.2f} | "
                     f"{lv.other_cpu:.2f} | {lv.rows_per_run:.2f} | {errors} |")
    return "\n".join(lines)


def replicas_needed(target: float, headroom: float, rps_per_pod: float) -> int:
    """Pods so that `target` uses at most 1 / (1 + headroom) of their measured capacity."""
    if not rps_per_pod > 0:
        raise ValueError("no successful requests at the highest level; cannot size replicas")
    return max(1, math.ceil(target * (1 + headroom) / rps_per_pod))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True,
                        help="a built model repository (python -m compression.build --out DIR)")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--variants", default="", help="comma-separated (default: every variant in the manifest)")
    parser.add_argument("--levels", default="1,4,16", help="concurrency levels (batch-1 requests)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per variant and level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every variant and level this many times, interleaved, and pool the rounds")
    parser.add_argument("--workers", type=int, default=usable_cores(), help="server --workers (default: the cores)")
    parser.add_argument("--target-rps", type=float, default=5000.0, help="load to size the replicas for")
    parser.add_argument("--headroom", type=float, default=0.30, help="spare capacity on top of --target-rps")
    args = parser.parse_args(argv)

    folder = args.repository / args.model
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        print(f"no {manifest_path}; build one first: python -m compression.build --out {args.repository}",
              file=sys.stderr)
        return 1
    manifest = json.loads(manifest_path.read_text())
    variants = [v for v in args.variants.split(",") if v] or list(manifest["variants"])
    unknown = sorted(set(variants) - manifest["variants"].keys())
    if unknown:
        print(f"--variants {','.join(unknown)}: choose from {', '.join(manifest['variants'])}", file=sys.stderr)
        return 2
    try:
        levels = sorted({int(c) for c in args.levels.split(",") if c})
    except ValueError:
        print(f"--levels {args.levels!r}: expected comma-separated integers such as 1,4,16", file=sys.stderr)
        return 2
    if not levels or levels[0] < 1 or args.seconds <= 0 or args.workers < 1 or args.rounds < 1:
        print("--levels, --seconds, --workers and --rounds must be positive", file=sys.stderr)
        return 2
    cores = usable_cores()
    inputs = request_inputs(folder, manifest)

    import onnxruntime

    print(f"# {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; CPU: {cpu_model()}; {cores} usable cores; "
          f"ONNX Runtime {onnxruntime.__version__}")
    print(f"# server: python -m server --model-repository {args.repository} --workers {args.workers} "
          f"--intra-op-threads 1 (batching on); client: 1 asyncio tritonclient process on the same cores")
    print(f"# {args.model}: batch-1 requests, {args.seconds:g} s per level after {args.warmup:g} s of warm-up, "
          f"{args.rounds} round(s) pooled; "
          f"req/s per core = req/s / {args.workers} server cores")
    server = start_server(args.repository, "--workers", str(args.workers), "--intra-op-threads", "1",
                          "--log-level", "WARNING", timeout=600)
    rounds: dict[tuple[str, int], list[Level]] = {(v, c): [] for v in variants for c in levels}
    try:
        for round_ in range(1, args.rounds + 1):  # every cell once per round: drift of the machine is shared out
            for variant in variants:
                for concurrency in levels:
                    level = asyncio.run(measure(server, args.model, variant, inputs, concurrency, args.seconds,
                                                args.warmup))
                    rounds[variant, concurrency].append(level)
                    print(f"#   round {round_}: {variant} c={concurrency}: {level.rps:,.0f} req/s", file=sys.stderr,
                          flush=True)
    finally:
        server.stop()
    results = [pooled(cells) for cells in rounds.values()]
    print()
    print(table(results, args.workers))
    top = levels[-1]
    print()
    print(f"Replicas for {args.target_rps:,.0f} req/s with {args.headroom:.0%} headroom "
          f"(ceil({args.target_rps:,.0f} x {1 + args.headroom:g} / req/s of one {args.workers}-core pod at c={top})):")
    print()
    print(f"| variant | req/s per pod at c={top} | replicas |")
    print("|---|---|---|")
    for level in (lv for lv in results if lv.concurrency == top):
        count = replicas_needed(args.target_rps, args.headroom, level.rps) if level.rps > 0 else "n/a"
        print(f"| {level.variant} | {level.rps:,.0f} | {count} |")
    failed = sum(sum(lv.errors.values()) for lv in results)
    if failed:
        print(f"\n{failed} requests failed; see the errors column", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
