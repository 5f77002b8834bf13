"""Which int8 recipe for all-MiniLM-L6-v2 on this CPU: fidelity to the teacher and speed, side by side.

Build the model first (`python -m compression.minilm.build --out model_repository --variants int8`),
then:

    python benchmarks/minilm_int8_recipes.py [--repository model_repository] [--model minilm]

Quantizes the teacher in the model folder with each recipe below, measures cosine_mean, cosine_min
and neighbour_agreement against the teacher on the held-out sentences (`heldout.npz`), and p50
latency at batch 1 (16 and 128 tokens) and batch 32 (128 and 16 tokens), 1 intra-op thread, all
recipes interleaved. Static recipes calibrate on `calibration.npz` (training sentences only).

    dynamic               ONNX Runtime dynamic quantization, per-tensor weights
    dynamic-pc            ... per-channel weights (what the build uses)
    dynamic-pc-rr         ... per-channel, reduce_range (7-bit weights)
    dynamic-pc-matmul     ... per-channel, MatMul only (embedding tables stay fp32)
    dynamic-pc-pre        ... per-channel after quant_pre_process (ONNX shape inference only; ORT's
                          symbolic shape inference does not complete on this graph)
    static-qdq-pc         static QDQ, per-channel weights, MinMax calibration, weight MatMuls only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compression.host import cpu_model  # noqa: E402
from compression.minilm.measure import (LATENCY_CASES, embed, latency_feeds,  # noqa: E402
                                        measure_latency, quality, session)

__all__ = ["main"]

RECIPES = ("dynamic", "dynamic-pc", "dynamic-pc-rr", "dynamic-pc-matmul", "dynamic-pc-pre", "static-qdq-pc")


def _quantize(recipe: str, src: Path, dst: Path, calibration: Path, scratch: Path) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    const_b = {"MatMulConstBOnly": True}
    if recipe == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, extra_options=const_b)
    elif recipe == "dynamic-pc":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gather"], extra_options=const_b)
    elif recipe == "dynamic-pc-rr":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, op_types_to_quantize=["MatMul", "Gather"], extra_options=const_b)
    elif recipe == "dynamic-pc-matmul":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], extra_options=const_b)
    elif recipe == "dynamic-pc-pre":
        pre = scratch / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gather"], extra_options=const_b)
    elif recipe == "static-qdq-pc":
        data = np.load(calibration)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                rows = len(data["input_ids"])
                self.batches = iter([{k: data[k][i:i + 16] for k in ("input_ids", "attention_mask")}
                                     for i in range(0, rows, 16)])

            def get_next(self):
                return next(self.batches, None)

        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax,
                        extra_options=const_b)
    else:
        raise ValueError(recipe)


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
    manifest = json.loads((folder / "manifest.json").read_text())
    teacher = folder / manifest["variants"]["teacher"]["file"]
    heldout = np.load(folder / manifest["data"]["heldout_file"])
    ids, mask = heldout["input_ids"], heldout["attention_mask"]
    reference = embed(session(teacher, threads=2), ids, mask)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"teacher (fp32)": teacher}
        for recipe in args.recipes.split(","):
            dst = Path(tmp) / f"{recipe}.onnx"
            _quantize(recipe, teacher, dst, folder / manifest["data"]["calibration_file"], Path(tmp))
            paths[recipe] = dst
            rows[recipe] = {"quality": quality(embed(session(dst, threads=2), ids, mask), reference),
                            "bytes": dst.stat().st_size}
            print(f"{recipe}: {rows[recipe]}", file=sys.stderr, flush=True)
        runs = dict(zip(LATENCY_CASES, (int(x) for x in args.runs.split(","))))
        timings = measure_latency(paths, latency_feeds(ids, mask), runs)
    base = timings["teacher (fp32)"]
    print(f"# int8 recipes for {args.model}, held-out {len(ids)} sentences, 1 thread, CPU {cpu_model()}")
    print("| recipe | cosine_mean | cosine_min | neighbour_agreement | MB | "
          + " | ".join(f"b{b} x {n} tok" for b, n in LATENCY_CASES.values()) + " |")
    print("|" + "---|" * (5 + len(LATENCY_CASES)))
    for name, t in timings.items():
        q = rows.get(name, {}).get("quality", {"cosine_mean": 1.0, "cosine_min": 1.0, "neighbour_agreement": 1.0})
        size = rows.get(name, {}).get("bytes", teacher.stat().st_size) / 1e6
        cells = [f"{t[c]['p50_ms']:.2f} ms ({base[c]['p50_ms'] / t[c]['p50_ms']:.2f}x)"
                 for c in LATENCY_CASES]
        print(f"| {name} | {q['cosine_mean']:.4f} | {q['cosine_min']:.4f} | {q['neighbour_agreement']:.4f} "
              f"| {size:.1f} | " + " | ".join(cells) + " |")
        rows.setdefault(name, {})["latency"] = t
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
