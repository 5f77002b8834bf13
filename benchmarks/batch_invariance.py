"""Throughput cost of batch invariance: non-invariant variants run per request instead of merged batches.

    python benchmarks/batch_invariance.py --repository /tmp/full/repo --model minilm --tokens 16
    python benchmarks/batch_invariance.py --repository model_repository --model digits

A scratch repository holds `--model` with each variant whose graph is not batch-invariant (dynamic int8:
DynamicQuantizeLinear, see modelrepo.invariance) twice: as built (`batch_invariant: false`, so the
server runs each request alone) and as `<name>-merged`, the same file marked invariant, so the server
merges concurrent requests as it did before. One `python -m server` (default settings but `--workers`)
serves both; single-row requests at `--concurrency` (default 16) drive each in turn, `--rounds` times
interleaved. Printed per variant: requests/s, p50/p99 ms and rows per run of each mode, and the cost
(per-request throughput over merged). On a machine shared with other work the figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from memory_settle import request_inputs  # noqa: E402
from server_process import start_server  # noqa: E402
from serving_load import drive  # noqa: E402

from modelrepo.host import cpu_model  # noqa: E402
from modelrepo.invariance import batch_invariant  # noqa: E402


def scratch_repository(source: Path, model: str, root: Path) -> tuple[Path, list[str]]:
    """`root` with `model` reduced to its non-invariant variants, each also as `<name>-merged`."""
    manifest = json.loads((source / model / "manifest.json").read_text())
    folder = root / model
    chosen: dict[str, dict] = {}
    for name, entry in manifest["variants"].items():
        if batch_invariant(source / model / entry["file"]):
            continue
        (folder / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / model / entry["file"], folder / entry["file"])
        chosen[name] = dict(entry, parent=None, batch_invariant=False)
        chosen[f"{name}-merged"] = dict(entry, parent=None, batch_invariant=True)  # same file, merged as before
    if not chosen:
        raise SystemExit(f"{model}: every variant is batch-invariant; nothing to measure")
    manifest["variants"] = chosen
    manifest["default_variant"] = next(iter(chosen))
    manifest["routing"] = {"policy": "fixed", "variant": manifest["default_variant"]}
    if manifest.get("tokenizer"):
        shutil.copy(source / model / manifest["tokenizer"]["file"], folder / manifest["tokenizer"]["file"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return root, [n for n in chosen if not n.endswith("-merged")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--tokens", type=int, default=16, help="token models: tokens per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="per variant, mode and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    manifest = json.loads((args.repository / args.model / "manifest.json").read_text())
    print(f"CPU: {cpu_model()} ({psutil.cpu_count()} logical cores; load average {psutil.getloadavg()[0]:.1f}: "
          f"shared with other work, so these figures are noisy); onnxruntime {ort.__version__}")
    with tempfile.TemporaryDirectory(prefix="batch_invariance_") as scratch:
        repository, variants = scratch_repository(args.repository, args.model, Path(scratch))
        flags = ["--workers", str(args.workers)]
        print(f"server flags: {' '.join(flags)} (other settings default); single-row requests"
              f"{f' of {args.tokens} tokens' if manifest.get('tokenizer') else ''}, concurrency {args.concurrency}, "
              f"{args.seconds:g} s per point, {args.rounds} interleaved rounds")
        server = start_server(repository, *flags, timeout=600)
        try:
            for variant in variants:
                results: dict[str, list[dict]] = {"per request": [], "merged": []}
                for _ in range(args.rounds):
                    for mode, served in (("merged", f"{variant}-merged"), ("per request", variant)):
                        results[mode].append(asyncio.run(drive(
                            server.url, args.model, served, lambda: request_inputs(manifest, 1, args.tokens, 0),
                            args.concurrency, args.seconds, 10 ** 9)))
                print(f"\n{args.model}/{variant}:")
                for mode, levels in results.items():
                    print(f"  {mode:12s} " + " | ".join(
                        f"{r['rps']:.0f} req/s p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms {r['rows_per_run']:.2f} rows/run"
                        + (f" errors {r['errors']}" if r["errors"] else "") for r in levels))
                merged = sum(r["rps"] for r in results["merged"]) / args.rounds
                alone = sum(r["rps"] for r in results["per request"]) / args.rounds
                print(f"  cost of batch invariance: per-request runs give {alone / merged:.2f}x the merged "
                      f"throughput ({(1 - alone / merged) * 100:+.0f}% lost)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
