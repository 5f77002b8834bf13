"""Speed of every variant of the `minilm` embedding model: ONNX Runtime in-process, and through the server.

Build the model first (`python -m compression.build --teacher minilm --out model_repository`), then:

    python benchmarks/minilm_inprocess.py [--repository model_repository] [--model minilm]
                                          [--threads 1] [--runs 200,60,12,60] [--json FILE]

Per variant: p50/p95 latency at batch 1 for short (16 tokens) and long (128 tokens) inputs, and
latency and throughput (sentences/s) at batch 32 of 128-token and of 16-token inputs; speed-ups are
p50 against the teacher. Inputs are real held-out sentences from the model folder (`heldout.npz`), joined to fill
each length (`modelrepo.latency.cases`; lengths past the tokenizer's `max_length` are cut to it). Sessions
use the server's recipe (`modelrepo.session`: intra-op threads as given, 1 inter-op thread, sequential,
all graph optimisations, no spinning), and the variants are interleaved run by run so that load from
other processes falls on all of them alike (`modelrepo.latency.measure_latency`). The model files are
checked against the manifest's sha256 first.

With `--server`, the same inputs (token ids, so the lengths are exact) are then sent through a fresh
`python -m server` (loopback, `--intra-op-threads` = `--threads`, 1 request at a time, tritonclient)
and a second table prints the same cases end to end, with the difference to in-process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrepo import ManifestError  # noqa: E402
from modelrepo.arrays import read_feeds  # noqa: E402
from modelrepo.files import read_manifest, sha256_file  # noqa: E402
from modelrepo.host import cpu_model, int8_features  # noqa: E402
from modelrepo.latency import TOKEN_CASES, TOKEN_RUNS, Case, cases, measure_latency  # noqa: E402
from modelrepo.records import TensorSpec, parse_model  # noqa: E402

__all__ = ["main"]


def _runs(text: str) -> dict[str, int]:
    values = [int(x) for x in text.split(",")]
    if len(values) != len(TOKEN_CASES) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--runs takes {len(TOKEN_CASES)} positive integers")
    return dict(zip(TOKEN_CASES, values, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1)")
    parser.add_argument("--runs", type=_runs, default=dict(TOKEN_RUNS),
                        help="timed runs for batch 1 x 16 tokens, 1 x 128, 32 x 128, 32 x 16 "
                             "(default 200,60,12,60)")
    parser.add_argument("--max-tokens-per-run", type=int, default=1024,
                        help="also time batch 32 x 128 in slices of at most this many tokens, as the server "
                             "runs it (the server's default; 0 = skip)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--server", action="store_true", help="also measure the same cases through the server")
    args = parser.parse_args(argv)

    folder = args.repository / args.model
    try:
        manifest = read_manifest(folder)
        spec = parse_model(folder, manifest, str(folder / "manifest.json"))
        heldout, _ = read_feeds(folder / manifest["data"]["heldout_file"], [t.name for t in spec.inputs])
    except (ManifestError, KeyError, TypeError) as exc:
        print(f"error: {folder}: {exc}", file=sys.stderr)
        return 1
    paths = {}
    for name, variant in spec.variants.items():
        if sha256_file(variant.path) != variant.sha256:
            print(f"error: {variant.path} does not match its sha256 in the manifest", file=sys.stderr)
            return 1
        paths[name] = variant.path
    feeds = cases(heldout, (spec.tokenizer or {}).get("max_length"))
    if set(feeds) != set(TOKEN_CASES):
        print(f"error: {args.model} does not take token inputs (input_ids, attention_mask)", file=sys.stderr)
        return 1

    big_batch, big_tokens, _ = feeds["batch_32"]
    cpu = cpu_model()
    timings = measure_latency(paths, feeds, args.runs, threads=args.threads, cpu=cpu)
    # The large batch again, run as the server runs it: slices of at most --max-tokens-per-run tokens.
    sliced = measure_latency(paths, {"batch_32": feeds["batch_32"]}, args.runs, threads=args.threads, cpu=cpu,
                             max_tokens_per_run=args.max_tokens_per_run) if args.max_tokens_per_run else {}

    print(f"# {args.model}: in-process ONNX Runtime, {args.threads} intra-op thread(s), 1 inter-op, "
          f"CPU {cpu} ({', '.join(int8_features())})")
    header = ["variant"]
    for batch, tokens, _ in feeds.values():
        header += [f"b{batch} x {tokens} tok p50 / p95 ms"] + (["sentences/s"] if batch > 1 else []) + ["speed-up"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    teacher = timings.get("teacher")
    for name, t in timings.items():
        cells = [name]
        for case, (batch, _, _) in feeds.items():
            c = t[case]
            cells.append(f"{c['p50_ms']:.2f} / {c['p95_ms']:.2f}")
            if batch > 1:
                cells.append(f"{c['sentences_per_s']:.1f}")
            cells.append(f"{teacher[case]['p50_ms'] / c['p50_ms']:.2f}x" if teacher else "-")
        print("| " + " | ".join(cells) + " |")
    if sliced:
        rows = next(iter(sliced.values()))["batch_32"].get("rows_per_run", big_batch)
        print(f"\n# b{big_batch} x {big_tokens} tok as the server runs it (--max-tokens-per-run {args.max_tokens_per_run}: "
              f"{rows} rows per ONNX Runtime run)")
        print(f"| variant | p50 / p95 ms | sentences/s | speed-up | vs one run of {big_batch} |")
        print("|---|---|---|---|---|")
        for name, t in sliced.items():
            c, whole = t["batch_32"], timings[name]["batch_32"]
            speedup = f"{sliced['teacher']['batch_32']['p50_ms'] / c['p50_ms']:.2f}x" if "teacher" in sliced else "-"
            print(f"| {name} | {c['p50_ms']:.2f} / {c['p95_ms']:.2f} | {c['sentences_per_s']:.1f} | {speedup} | "
                  f"{whole['p50_ms'] / c['p50_ms']:.2f}x faster |")
    served = _through_server(args, feeds, spec.inputs, list(paths)) if args.server else {}
    if served:
        print(f"\n# {args.model}: through `python -m server` (tritonclient.grpc, concurrency 1, token-id inputs, "
              f"--intra-op-threads {args.threads}); p50 / p95 ms, and p50 minus in-process p50 "
              f"(b{big_batch} x {big_tokens}: the sliced run)")
        header = ["variant"] + [f"b{b} x {t} tok p50 / p95 ms (+ms)" for b, t, _ in feeds.values()]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for name, measured in served.items():
            # The server slices big batches, so compare those with the sliced in-process run.
            reference = {**timings[name], **sliced.get(name, {})}
            cells = [name] + [f"{c['p50_ms']:.2f} / {c['p95_ms']:.2f} ({c['p50_ms'] - reference[k]['p50_ms']:+.2f})"
                              for k, c in measured.items()]
            print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": args.threads, "cpu": cpu,
                                         "int8_features": int8_features(), "variants": timings, "sliced": sliced,
                                         "server": served}, indent=2))
    return 0


def _through_server(args: argparse.Namespace, feeds: dict[str, Case], inputs: tuple[TensorSpec, ...],
                    variants: list[str]) -> dict[str, dict[str, Any]]:
    """Per variant and case: p50/p95 ms of the same inputs (the manifest's `inputs`, by name) sent one
    at a time through a real server."""
    import time

    sys.path.insert(0, str(ROOT / "tests"))
    import tritonclient.grpc as triton
    from server_process import start_server

    server = start_server(args.repository, "--intra-op-threads", str(args.threads), "--max-tokens-per-run",
                          str(args.max_tokens_per_run), "--log-level", "WARNING",
                          timeout=300)
    out: dict[str, dict[str, Any]] = {}
    try:
        client = triton.InferenceServerClient(server.url)
        for name in variants:
            out[name] = {}
            for case, (_, _, case_feeds) in feeds.items():
                request = []
                for wanted in inputs:
                    array = np.ascontiguousarray(case_feeds[0][wanted.name])
                    tensor = triton.InferInput(wanted.name, list(array.shape), wanted.datatype)
                    tensor.set_data_from_numpy(array)
                    request.append(tensor)
                for _ in range(3):
                    client.infer(args.model, request, model_version=name)
                times = []
                for _ in range(args.runs[case]):
                    began = time.perf_counter()
                    client.infer(args.model, request, model_version=name)
                    times.append((time.perf_counter() - began) * 1e3)
                p50, p95 = np.percentile(times, [50, 95])
                out[name][case] = {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
                                   "runs": args.runs[case]}
    finally:
        server.stop()
    return out


if __name__ == "__main__":
    sys.exit(main())
