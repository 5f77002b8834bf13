"""Which int8 recipe for all-MiniLM-L6-v2 on this CPU: fidelity to the teacher and speed, side by side.

Build the model first (`python -m compression.build --teacher minilm --out model_repository --variants int8`),
then:

    python benchmarks/minilm_int8_recipes.py [--repository model_repository] [--model minilm]

Quantizes the teacher in the model folder with each recipe below, measures cosine_mean, cosine_min
and neighbour_agreement against the teacher on the held-out sentences (`heldout.npz`), and p50
latency at batch 1 (16 and 128 tokens) and batch 32 (128 and 16 tokens), 1 intra-op thread, all
recipes interleaved (`modelrepo.latency`). Static recipes calibrate on `calibration.npz` (training
sentences only). Every recipe is one `modelrepo.int8.quantize_int8` call (no accuracy-aware search),
dynamic ones quantizing only MatMuls by a stored weight (MatMulConstBOnly).

    dynamic               ONNX Runtime dynamic quantization, per-tensor weights
    dynamic-pc            ... per-channel weights, MatMul and Gather (the build's recipe on CPUs with
                          fast int8 dot products, e.g. VNNI)
    dynamic-pc-rr         ... per-channel, reduce_range (7-bit weights; the build's recipe on x86
                          CPUs without them: `--int8-reduce-range` defaults to auto)
    dynamic-pc-matmul     ... per-channel, MatMul only (embedding tables stay fp32)
    dynamic-pc-pre        ... per-channel after quant_pre_process (ONNX shape inference only; ORT's
                          symbolic shape inference does not complete on this graph)
    static-qdq-pc         static QDQ, per-channel weights, MinMax calibration, MatMul only (ORT's QDQ
                          quantizer ignores MatMulConstBOnly: attention's two activation MatMuls per
                          layer are quantized too)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrepo.arrays import read_feeds  # noqa: E402
from modelrepo.files import read_manifest  # noqa: E402
from modelrepo.host import cpu_flags, cpu_model  # noqa: E402
from modelrepo.int8 import QuantizeOptions, quantize_int8, resolved_reduce_range  # noqa: E402
from modelrepo.latency import TOKEN_CASES, cases, measure_latency  # noqa: E402
from modelrepo.measure import Feeds, embedding_quality, run  # noqa: E402
from modelrepo.records import parse_model  # noqa: E402
from modelrepo.session import open_session  # noqa: E402

__all__ = ["main"]

# Recipe → (options, reduce_range). Dynamic: MatMuls by a stored weight (and Gather, the embedding table).
_DYNAMIC = QuantizeOptions(mode="dynamic", per_channel=True, op_types=("MatMul", "Gather"),
                           matmul_const_b_only=True, preprocess=False)
RECIPE_OPTIONS: dict[str, tuple[QuantizeOptions, bool]] = {
    "dynamic": (replace(_DYNAMIC, per_channel=False, op_types=None), False),
    "dynamic-pc": (_DYNAMIC, False),
    "dynamic-pc-rr": (_DYNAMIC, True),
    "dynamic-pc-matmul": (replace(_DYNAMIC, op_types=("MatMul",)), False),
    "dynamic-pc-pre": (replace(_DYNAMIC, preprocess=True), False),
    # Every MatMul: ONNX Runtime's QDQ quantizer has no MatMulConstBOnly (quantize_int8 passes none).
    "static-qdq-pc": (QuantizeOptions(mode="static", per_channel=True, op_types=("MatMul",),
                                      calibration_method="minmax", activation_type="uint8", batch_size=16,
                                      preprocess=False), False),
}
RECIPES = tuple(RECIPE_OPTIONS)


def _quantize(recipe: str, src: Path, dst: Path, calibration: Feeds, scratch: Path) -> None:
    options, reduce_range = RECIPE_OPTIONS[recipe]
    if options.preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = scratch / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        src = pre
    quantize_int8(src, dst, calibration if options.mode == "static" else None, options,
                  reduce_range=reduce_range)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--runs", default="100,30,6,30",
                        help="timed runs: b1 x 16 tokens, b1 x 128, b32 x 128, b32 x 16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import logging
    logging.getLogger().setLevel(logging.ERROR)

    folder = args.repository / args.model
    manifest = read_manifest(folder)
    spec = parse_model(folder, manifest, str(folder / "manifest.json"))
    teacher = spec.variants["teacher"].path
    names = [t.name for t in spec.inputs]
    heldout, _ = read_feeds(folder / manifest["data"]["heldout_file"], names)
    calibration, _ = read_feeds(folder / manifest["data"]["calibration_file"], names)
    sentences = len(heldout["input_ids"])
    reference = run(open_session(teacher, intra_op_threads=2), heldout)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"teacher (fp32)": teacher}
        for recipe in args.recipes.split(","):
            dst = Path(tmp) / f"{recipe}.onnx"
            _quantize(recipe, teacher, dst, calibration, Path(tmp))
            paths[recipe] = dst
            rows[recipe] = {"quality": embedding_quality(run(open_session(dst, intra_op_threads=2), heldout),
                                                         reference),
                            "bytes": dst.stat().st_size}
            print(f"{recipe}: {rows[recipe]}", file=sys.stderr, flush=True)
        runs = dict(zip(TOKEN_CASES, (int(x) for x in args.runs.split(","))))
        latency_cases = cases(heldout, (spec.tokenizer or {}).get("max_length"))
        timings = measure_latency(paths, latency_cases, runs, cpu=cpu_model())
    base = timings["teacher (fp32)"]
    built = "dynamic-pc-rr" if resolved_reduce_range(QuantizeOptions(), cpu_flags()) else "dynamic-pc"
    print(f"# int8 recipes for {args.model}, held-out {sentences} sentences, 1 thread, CPU {cpu_model()} "
          f"(the build's default recipe here: {built})")
    print("| recipe | cosine_mean | cosine_min | neighbour_agreement | MB | "
          + " | ".join(f"b{b} x {n} tok" for b, n, _ in latency_cases.values()) + " |")
    print("|" + "---|" * (5 + len(latency_cases)))
    for name, t in timings.items():
        q = rows.get(name, {}).get("quality", {"cosine_mean": 1.0, "cosine_min": 1.0, "neighbour_agreement": 1.0})
        size = rows.get(name, {}).get("bytes", teacher.stat().st_size) / 1e6
        cells = [f"{t[c]['p50_ms']:.2f} ms ({base[c]['p50_ms'] / t[c]['p50_ms']:.2f}x)"
                 for c in latency_cases]
        print(f"| {name} | {q['cosine_mean']:.4f} | {q['cosine_min']:.4f} | {q['neighbour_agreement']:.4f} "
              f"| {size:.1f} | " + " | ".join(cells) + " |")
        rows.setdefault(name, {})["latency"] = t
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
