"""Throughput and latency under concurrent load, with and without dynamic batching, beside ONNX Runtime alone.

    python benchmarks/serving_load.py --repository model_repository --model digits --variant int8
    python benchmarks/serving_load.py --model minilm --variant int8 --tokens 16

Two `python -m server` processes, batching on and off (loopback, free ports, `--workers W
--intra-op-threads 1`, the other settings at their defaults), are driven by one asyncio client process
(tritonclient.grpc.aio) at concurrency 1, 4 and 16; at each level the two modes take `--rounds` turns
each (a mode's `--seconds` split between its turns, each turn also bounded by `--requests`), and a
mode's turns are pooled. Printed per level: requests/s, p50 and p99 latency in ms, errors, mean rows per
ONNX Runtime run (from ModelStatistics), the client's own CPU seconds per request (client and server
share this machine's cores) and the req/s ratio of batching on to off. In-process figures use the same
file and thread settings: W threads each running batch 1, and W threads each running batch 16.
Text models take `--tokens N` (a sentence of about N tokens, sent as BYTES `text`, tokenized by the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from server_process import start_server  # noqa: E402

from modelrepo.arrays import read_feeds  # noqa: E402
from modelrepo.measure import rows_per_run, run_in_slices  # noqa: E402
from modelrepo.session import open_session  # noqa: E402

WORDS = ("the quick brown fox jumps over the lazy dog while a small bird sings in the old oak tree near the "
         "river and children play happily in the warm afternoon sun").split()


def sentence(tokens: int) -> str:
    """About `tokens` word-piece tokens ([CLS] and [SEP] included) of plain English."""
    words = (WORDS * (tokens // len(WORDS) + 1))[: max(1, tokens - 2)]
    return " ".join(words)


def inprocess_feeds(folder: Path, manifest: dict[str, Any], rows: int, tokens: int) -> dict[str, np.ndarray]:
    names = [t["name"] for t in manifest["inputs"]]
    if manifest.get("tokenizer"):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / manifest["tokenizer"]["file"]))
        tok.enable_truncation(max_length=int(manifest["tokenizer"].get("max_length", 256)))
        tok.enable_padding()
        enc = tok.encode_batch([sentence(tokens)] * rows)
        cols = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
                "token_type_ids": [e.type_ids for e in enc]}
        return {n: np.array(cols[n], dtype=np.int64) for n in names}
    feeds, _ = read_feeds(folder / manifest.get("data", {}).get("heldout_file", "heldout.npz"), names)
    return {n: np.ascontiguousarray(feeds[n][:rows]) for n in names}


def inprocess_throughput(path: Path, feeds: dict[str, np.ndarray], threads: int, seconds: float,
                         max_tokens_per_run: int) -> float:
    """Rows per second with `threads` threads each running the session on `feeds` (1 intra-op thread),
    token batches sliced as the server slices them (`max_tokens_per_run`; 0 for models without tokens)."""
    session = open_session(path, 1)
    rows_at_once = rows_per_run(feeds, max_tokens_per_run)
    for _ in range(5):
        run_in_slices(session, feeds, rows_at_once)
    rows = next(iter(feeds.values())).shape[0]
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < deadline:
            run_in_slices(session, feeds, rows_at_once)
            counts[i] += rows

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - started)


def inprocess_latency(path: Path, feeds: dict[str, np.ndarray], runs: int = 300) -> float:
    session = open_session(path, 1)
    for _ in range(10):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


async def drive(url: str, model: str, variant: str, make_inputs, concurrency: int, seconds: float,
                limit: int) -> dict[str, Any]:
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(url)
    for _ in range(20):
        await client.infer(model, make_inputs(), model_version=variant)
    before = await client.get_inference_statistics(model, variant, as_json=True)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued
        inputs = make_inputs()
        while time.perf_counter() < deadline and issued < limit:
            issued += 1
            t = time.perf_counter()
            try:
                await client.infer(model, inputs, model_version=variant)
                latencies.append(time.perf_counter() - t)
            except Exception as exc:  # counted and printed; a benchmark must finish
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    after = await client.get_inference_statistics(model, variant, as_json=True)
    await client.close()
    b, a = before["model_stats"][0], after["model_stats"][0]
    runs = int(a.get("execution_count", 0)) - int(b.get("execution_count", 0))
    rows = int(a.get("inference_count", 0)) - int(b.get("inference_count", 0))
    lat = np.array(latencies) * 1e3 if latencies else np.array([float("nan")])
    return {"concurrency": concurrency, "requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "errors": errors,
            "rows_per_run": rows / runs if runs else float("nan"),
            "client_cpu_ms": cpu / max(1, len(latencies)) * 1e3,
            "latencies": lat, "elapsed": elapsed, "runs": runs, "rows": rows, "cpu": cpu}


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure per mode from its rounds: requests over the rounds' total time, percentiles over all
    latencies, rows per run over all runs."""
    lat = np.concatenate([r["latencies"] for r in results])
    requests = sum(r["requests"] for r in results)
    runs, rows = sum(r["runs"] for r in results), sum(r["rows"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for key, count in r["errors"].items():
            errors[key] = errors.get(key, 0) + count
    return {"requests": requests, "rps": requests / sum(r["elapsed"] for r in results),
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "errors": errors,
            "rows_per_run": rows / runs if runs else float("nan"),
            "client_cpu_ms": sum(r["cpu"] for r in results) / max(1, requests) * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--variant", default="teacher")
    parser.add_argument("--tokens", type=int, default=16, help="text models: tokens per sentence")
    parser.add_argument("--levels", default="1,4,16", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=8.0, help="time bound per level and mode")
    parser.add_argument("--rounds", type=int, default=2, help="turns per level and mode the seconds are split into")
    parser.add_argument("--requests", type=int, default=20000, help="request bound per level")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--max-tokens-per-run", type=int, default=1024,
                        help="the server's token slicing, applied in-process too (default: the server's)")
    args = parser.parse_args()

    folder = args.repository / args.model
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        print(f"no {manifest_path}; build it first: python -m compression.build", file=sys.stderr)
        return 1
    manifest = json.loads(manifest_path.read_text())
    if args.variant not in manifest["variants"]:
        print(f"--variant {args.variant!r}: choose from {sorted(manifest['variants'])}", file=sys.stderr)
        return 2
    path = folder / manifest["variants"][args.variant]["file"]
    text = bool(manifest.get("tokenizer"))

    import tritonclient.grpc.aio as aio

    def make_inputs() -> list:
        if text:
            tensor = aio.InferInput("text", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([sentence(args.tokens).encode()], dtype=np.object_))
            return [tensor]
        feeds = inprocess_feeds(folder, manifest, 1, args.tokens)
        out = []
        for name, array in feeds.items():
            tensor = aio.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
            tensor.set_data_from_numpy(array)
            out.append(tensor)
        return out

    one = inprocess_feeds(folder, manifest, 1, args.tokens)
    sixteen = inprocess_feeds(folder, manifest, 16, args.tokens)
    seq = next(iter(one.values())).shape[-1] if text else None
    print(f"# {args.model}/{args.variant}: {path.name} ({path.stat().st_size} bytes)"
          + (f", {seq} tokens" if seq else ""))
    print(f"# threads: server --workers {args.workers} --intra-op-threads 1; in-process {args.workers} threads x 1 "
          f"intra-op thread; client: 1 asyncio process (tritonclient.grpc.aio) on the same {os.cpu_count()} cores")
    p50 = inprocess_latency(path, one)
    slicing = args.max_tokens_per_run if text else 0  # the server slices token models only
    tput1 = inprocess_throughput(path, one, args.workers, 4.0, slicing)
    tput16 = inprocess_throughput(path, sixteen, args.workers, 4.0, slicing)
    line = f"in-process: batch 1 p50 {p50:.3f} ms; {tput1:.0f} rows/s at batch 1; {tput16:.0f} rows/s at batch 16"
    sliced_rows = rows_per_run(sixteen, slicing)
    if sliced_rows:
        whole = inprocess_throughput(path, sixteen, args.workers, 4.0, 0)
        line += f" in slices of {sliced_rows} rows as the server runs it ({whole:.0f} as one run of 16)"
    print(line)
    levels = [int(x) for x in args.levels.split(",")]
    print(f"# both servers stay up; each level runs {args.rounds} rounds per mode, taking turns (who goes first "
          f"alternates), and the rounds are pooled: the machine's drift hits both modes alike")
    print("| batching | concurrency | req/s | p50 ms | p99 ms | rows/run | errors | client CPU ms/req | vs in-process batch 16 "
          "| req/s on / off |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    servers = {}
    try:
        for mode in ("--batching", "--no-batching"):
            servers[mode] = start_server(args.repository, mode, "--workers", str(args.workers), "--intra-op-threads",
                                         "1", "--max-tokens-per-run", str(args.max_tokens_per_run),
                                         "--log-level", "WARNING")
        for level in levels:
            rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in servers}
            for k in range(args.rounds):
                for mode in (("--batching", "--no-batching") if k % 2 == 0 else ("--no-batching", "--batching")):
                    rounds[mode].append(asyncio.run(drive(servers[mode].url, args.model, args.variant, make_inputs,
                                                          level, args.seconds / args.rounds, args.requests)))
            pooled = {mode: pool(results) for mode, results in rounds.items()}
            ratio = pooled["--batching"]["rps"] / pooled["--no-batching"]["rps"]
            for mode, r in pooled.items():
                print(f"| {'on' if mode == '--batching' else 'off'} | {level} | {r['rps']:.0f} | {r['p50']:.3f} | "
                      f"{r['p99']:.3f} | {r['rows_per_run']:.2f} | {sum(r['errors'].values())} | "
                      f"{r['client_cpu_ms']:.3f} | {r['rps'] / tput16:.0%} | {ratio:.2f} |", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
