"""What the build shows: the final table, `report.md` and a quality-versus-latency chart, all read
back from the manifest it is about to write (so they can never disagree with it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["CHART", "REPORT", "render_table", "write_chart", "write_report"]

REPORT = "report.md"
CHART = "chart.png"


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _quality_columns(manifest: dict[str, Any]) -> list[str]:
    if manifest["task"] == "classification":
        labelled = any("accuracy" in v["quality"] for v in manifest["variants"].values())
        return ["accuracy", "agreement"] if labelled else ["agreement"]
    return ["cosine_mean", "cosine_min", "neighbour_agreement"]


def _rows(manifest: dict[str, Any]) -> tuple[list[str], list[tuple[str, ...]]]:
    variants = manifest["variants"]
    metric = manifest["primary_metric"]
    teacher = variants["teacher"]
    base_q = teacher["quality"].get(metric)
    columns = _quality_columns(manifest)
    headers = ["variant", *columns, f"Δ{metric} pts", "bytes", "% teacher", "params", "% teacher",
               "MACs", "b1 p50 ms", "b1 p95 ms", "b32 p50 ms"]

    def row(name: str, quality: dict[str, float], size: int | None, params: int | None,
            macs: int | None, latency: dict[str, Any] | None) -> tuple[str, ...]:
        value = quality.get(metric)
        delta = None if value is None or base_q is None else 100.0 * (value - base_q)
        lat = latency or {}
        return (name, *(_num(quality.get(c), ".4f") for c in columns), _num(delta, "+.2f"),
                _num(size, ",d"), "-" if size is None else _pct(size, teacher["bytes"]),
                _num(params, ",d"), "-" if params is None else _pct(params, teacher["parameters"]),
                _num(macs, ",d"),
                _num(lat.get("batch_1", {}).get("p50_ms"), ".3f"),
                _num(lat.get("batch_1", {}).get("p95_ms"), ".3f"),
                _num(lat.get("batch_32", {}).get("p50_ms"), ".3f"))

    rows = [row(name, v["quality"], v["bytes"], v["parameters"], v["macs"], v["latency"])
            for name, v in variants.items()]
    for name, b in manifest.get("baselines", {}).items():
        rows.append(row(f"({name})", b.get("quality", {}), None, b.get("parameters"), None, None))
    return headers, rows


def _footer(manifest: dict[str, Any]) -> str:
    first = next(iter(manifest["variants"].values()))["latency"]
    return (f"latency: ONNX Runtime CPU, {first['threads']} thread(s), {first['cpu']}; "
            f"quality on the held-out test split; (baselines) are not served")


def render_table(manifest: dict[str, Any]) -> str:
    """One row per variant (and per unserved baseline), figures relative to the teacher."""
    headers, rows = _rows(manifest)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    lines.append(_footer(manifest))
    return "\n".join(lines)


def write_chart(manifest: dict[str, Any], path: Path) -> bool:
    """Quality (primary metric) against batch-1 p50 latency, one bubble per variant, its area
    proportional to the file's bytes. False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        return False
    metric = manifest["primary_metric"]
    variants = manifest["variants"]
    largest = max(v["bytes"] for v in variants.values())
    points = [(name, v["latency"]["batch_1"]["p50_ms"], v["quality"][metric], v["bytes"])
              for name, v in variants.items() if v["quality"].get(metric) is not None]
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    span_x = math.log10(max(xs) / min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    placed: list[tuple[float, float]] = []
    for name, x, y, size in points:
        area = 60 + 2400 * size / largest
        ax.scatter([x], [y], s=area, alpha=0.45, edgecolors="black", linewidths=0.8)
        # Labels right of the bubble; points that (nearly) coincide stack their labels downwards.
        here = (math.log10(x) / span_x, y / span_y)
        crowd = sum(1 for px, py in placed if abs(px - here[0]) < 0.08 and abs(py - here[1]) < 0.08)
        placed.append(here)
        ax.annotate(f"{name} ({size / 1024:,.0f} KiB)", (x, y), fontsize=8, ha="left", va="center",
                    xytext=(math.sqrt(area / math.pi) + 3, -12 * crowd), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("latency, batch 1, p50 (ms, log scale)")
    ax.set_ylabel(f"{metric} (held-out test split)")
    ax.set_title(f"{manifest['name']}: quality vs latency (bubble area = file bytes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _markdown_table(manifest: dict[str, Any]) -> str:
    headers, rows = _rows(manifest)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _fp32(params: dict[str, Any]) -> str:
    """Nodes kept in fp32, each with the weight it multiplies by (from the sensitivity record)."""
    weights = {r["node"]: r.get("weight") for r in params.get("sensitivity") or []}
    return ", ".join(f"{n} ({weights[n]})" if weights.get(n) else n
                     for n in params.get("fp32_nodes") or [])


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _notes(name: str, variant: dict[str, Any]) -> list[str]:
    """Recipe facts a reader needs to trust the row."""
    p = variant["recipe"].get("params", {})
    kind = variant["kind"]
    notes: list[str] = []
    if variant["recipe"].get("name", "").startswith("quantize"):
        budget = p.get("budget", {})
        limit = (f"at most {budget['max_drop_points']} points below {variant['parent']}"
                 if "max_drop_points" in budget else f"at least {budget.get('min_value')}")
        notes.append(f"int8 {p.get('mode')}, per-channel {p.get('per_channel')}, "
                     f"reduce_range {p.get('reduce_range')}; budget: {budget.get('metric')} "
                     f"{limit} on validation: {'met' if p.get('budget_met') else 'MISSED'} "
                     f"({p.get('validation_value')}); kept in fp32: {_fp32(p) or 'none'}")
        checked = p.get("checked_on", {})
        notes.append(f"checked with {checked.get('runtime')} on {checked.get('cpu')} "
                     f"(int8 features: {', '.join(checked.get('int8_features') or []) or 'none'})")
    if kind == "pruned":
        before, after = p.get("latency_before", {}), p.get("latency_after", {})
        what = (f"{p.get('ratio')} ({p.get('importance')}, {p.get('steps')} step(s))" if "ratio" in p else
                f"to {p.get('heads_per_layer')} heads and {p.get('ffn_per_layer')} FFN neurons per layer")
        notes.append(f"structural pruning {what}: MACs {_count(p.get('macs_before'))} → "
                     f"{_count(p.get('macs_after'))}; batch-1 p50 {before.get('batch_1_p50_ms')} → "
                     f"{after.get('batch_1_p50_ms')} ms")
    if kind == "distilled":
        student = p.get("student", {})
        shape = (f"layers {p['layers_from_teacher']} of the teacher" if "layers_from_teacher" in p else
                 f"{student.get('source')}, layer widths {student.get('layer_widths')}")
        notes.append(f"student: {shape}; loss {p.get('loss')}; best epoch {p.get('best_epoch')} of "
                     f"{p.get('epochs_run')}")
    if kind == "shared":
        notes.append(f"weight sharing, {p.get('bits')}-bit indices: file "
                     f"{_count(p.get('file_bytes_before'))} → {_count(p.get('file_bytes_after'))} bytes. "
                     "Saves storage only: ONNX Runtime rebuilds fp32 weights when it loads the "
                     "file, so compute and memory are unchanged.")
    return notes


def write_report(manifest: dict[str, Any], folder: Path) -> list[str]:
    """Write `report.md` (and `chart.png` when matplotlib is there); return the file names."""
    written = [REPORT]
    chart = write_chart(manifest, folder / CHART)
    if chart:
        written.append(CHART)
    data, host = manifest["data"], manifest["host"]
    lines = [f"# {manifest['name']}: compression report", "",
             f"Task: {manifest['task']}, primary metric `{manifest['primary_metric']}`. "
             f"Data: {data['name']} (seed {data['seed']}, splits {data['splits']}). "
             f"Built {manifest['created']} on {host['cpu']} ({host['cores']} cores; int8 "
             f"features: {', '.join(host['int8_features']) or 'none'}).", "",
             _markdown_table(manifest), "", _footer(manifest) + ".", ""]
    if chart:
        lines += [f"![quality versus latency, bubble area = bytes]({CHART})", ""]
    else:
        lines += ["(no chart: matplotlib is not installed)", ""]
    lines += ["## Variants", ""]
    for name, variant in manifest["variants"].items():
        parent = f" from `{variant['parent']}`" if variant["parent"] else ""
        lines.append(f"- **{name}** ({variant['recipe'].get('name')}{parent}), "
                     f"{variant['build_seconds']} s")
        lines += [f"  - {n}" for n in _notes(name, variant)]
    lines.append("")
    (folder / REPORT).write_text("\n".join(lines), encoding="utf-8")
    return written
