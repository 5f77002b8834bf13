"""Server RSS at ready, at the peak of a burst of big batches, and over 10 s of idle after it.

    python benchmarks/memory_settle.py --repository /tmp/full/repo --model minilm --variants teacher,int8
    python benchmarks/memory_settle.py --repository model_repository --model digits --rows 64

A scratch repository holds only `--model` with the `--variants` measured (copies), so the ready figure
is that of a server with just them. For each `--idle-settle-seconds` value (default "0,1": never
settle, as before, and the server's default) a fresh `python -m server` is started (loopback, free
ports); its RSS is read (psutil) at ready, sampled every 50 ms during `--batches` requests per variant
of `--rows` rows sent `--concurrency` at a time (token models: random ids of `--tokens` tokens, all
attended), then every second for `--idle` seconds. Printed: ready,
peak, RSS after the idle time and its ratio to ready (target <= 1.2), the variants'
slimserve_variant_memory_bytes, the CPU model and the server settings. Other load on the machine
changes the timings, not the memory figures.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import tritonclient.grpc as triton

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from server_process import ServerProcess, start_server  # noqa: E402

from modelrepo.host import cpu_model  # noqa: E402

DATATYPES = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32}
MB = 2 ** 20


def request_inputs(manifest: dict, rows: int, tokens: int, seed: int) -> list[triton.InferInput]:
    """One request of `rows` rows: random features, or random token ids with a full attention mask."""
    rng = np.random.default_rng(seed)
    inputs = []
    for spec in manifest["inputs"]:
        if spec["name"] == "attention_mask":
            x = np.ones((rows, tokens), np.int64)
        elif spec["name"] == "input_ids":
            x = rng.integers(1000, 20000, size=(rows, tokens)).astype(np.int64)
        elif spec["name"] == "token_type_ids":
            x = np.zeros((rows, tokens), np.int64)
        else:
            shape = [rows, *(d if d > 0 else tokens for d in spec["shape"][1:])]
            x = rng.normal(size=shape).astype(DATATYPES[spec["datatype"]])
        tensor = triton.InferInput(spec["name"], list(x.shape), spec["datatype"])
        tensor.set_data_from_numpy(x)
        inputs.append(tensor)
    return inputs


def variant_memory(server: ServerProcess, model: str) -> dict[str, int]:
    found = re.findall(rf'^slimserve_variant_memory_bytes{{[^}}]*model="{re.escape(model)}"[^}}]*variant="([^"]+)"[^}}]*}} (\S+)$',
                       server.metrics(), re.M)
    return {variant: int(float(value)) for variant, value in found}


def scratch_repository(source: Path, model: str, variants: list[str], root: Path) -> Path:
    """`root` with a copy of `model` reduced to `variants` (their files, the tokenizer, the manifest)."""
    manifest = json.loads((source / model / "manifest.json").read_text())
    manifest["variants"] = {name: dict(manifest["variants"][name], parent=None) for name in variants}
    manifest["default_variant"] = variants[0]
    manifest["routing"] = {"policy": "fixed", "variant": variants[0]}
    folder = root / model
    for entry in manifest["variants"].values():
        (folder / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / model / entry["file"], folder / entry["file"])
    if manifest.get("tokenizer"):
        shutil.copy(source / model / manifest["tokenizer"]["file"], folder / manifest["tokenizer"]["file"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return root


def run_once(args: argparse.Namespace, repository: Path, manifest: dict, settle: float) -> dict:
    extra = ["--workers", str(args.workers), "--max-batch-size", str(max(64, args.rows)),
             "--idle-settle-seconds", str(settle)]
    server = start_server(repository, *extra, timeout=600)
    try:
        process = psutil.Process(server.process.pid)
        ready = process.memory_info().rss
        peak = ready
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.05):
                peak = max(peak, process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        client = triton.InferenceServerClient(server.url)
        started = time.perf_counter()
        jobs = [(variant, i) for variant in args.variants.split(",") for i in range(args.batches)]
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda job: client.infer(args.model, request_inputs(manifest, args.rows, args.tokens, job[1]),
                                                   model_version=job[0]), jobs))
        burst_seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        peak = max(peak, process.memory_info().rss)
        idle = []
        for _ in range(args.idle):
            time.sleep(1.0)  # the idle period itself is what is measured
            idle.append(process.memory_info().rss)
        return {"settle": settle, "ready": ready, "peak": peak, "idle": idle, "burst_seconds": burst_seconds,
                "variant_memory": variant_memory(server, args.model), "settings": extra}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--variants", default="teacher", help="comma list: served and burst, in turn")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128, help="token models: tokens per row")
    parser.add_argument("--batches", type=int, default=8, help="requests per variant")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle", type=int, default=10, help="idle seconds measured after the burst")
    parser.add_argument("--settle", default="0,1", help="comma list of --idle-settle-seconds values to compare")
    args = parser.parse_args(argv)
    manifest = json.loads((args.repository / args.model / "manifest.json").read_text())
    print(f"CPU: {cpu_model()} ({psutil.cpu_count()} logical cores; load average {psutil.getloadavg()[0]:.1f}: "
          f"a shared machine moves timings, not memory); onnxruntime {ort.__version__}")
    print(f"burst: {args.batches} requests of {args.rows} rows"
          f"{f' x {args.tokens} tokens' if manifest.get('tokenizer') else ''} to each of {args.model}/{{{args.variants}}}, "
          f"{args.concurrency} at a time; the server holds only those variants (copied from {args.repository})")
    with tempfile.TemporaryDirectory(prefix="memory_settle_") as scratch:
        repository = scratch_repository(args.repository, args.model, args.variants.split(","), Path(scratch))
        results = [run_once(args, repository, manifest, float(s)) for s in args.settle.split(",")]
    for r in results:
        after = r["idle"][-1] if r["idle"] else r["peak"]
        print(f"\nserver flags: {' '.join(r['settings'])} (other settings default)")
        print(f"  RSS ready {r['ready'] / MB:.0f} MB, peak {r['peak'] / MB:.0f} MB (burst {r['burst_seconds']:.1f} s), "
              f"after {args.idle} s idle {after / MB:.0f} MB = {after / r['ready']:.2f}x ready "
              f"({'meets' if after <= 1.2 * r['ready'] else 'misses'} <= 1.2x)")
        print("  idle RSS by second (MB): " + " ".join(f"{v / MB:.0f}" for v in r["idle"]))
        print("  slimserve_variant_memory_bytes (MB): "
              + ", ".join(f"{k} {v / MB:.1f}" for k, v in sorted(r["variant_memory"].items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
