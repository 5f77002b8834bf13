"""What the build shows: the final table, `report.md` and a quality-versus-latency chart, all read
back from the manifest it is about to write (so they can never disagree with it).

`python -m compression.report FOLDER...` writes them again from a built folder's manifest.json,
without a rebuild (say, after a change to the chart)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["CHART", "REPORT", "chart_figure", "main", "render_table", "write_chart", "write_report"]

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


# The quality axis spans at least this much (5 points of a 0-1 metric), so that differences of a
# fraction of a point look as small as they are.
MIN_QUALITY_SPAN = 0.05


def _label_offsets(radius: float) -> list[tuple[float, float, str, str]]:
    """Places to try for a bubble's label, nearest first: (dx, dy in points, ha, va)."""
    gap = radius + 4
    near = [(gap, 0.0, "left", "center"), (-gap, 0.0, "right", "center"),
            (0.0, gap, "center", "bottom"), (0.0, -gap, "center", "top")]
    # Then ever farther, in lines of text and steps sideways (a bubble inside a bigger one needs both).
    farther = [(side * (gap + 24.0 * out), step * 11.0 * sign, "left" if side > 0 else "right", "center")
               for out in range(3) for step in range(0 if out else 1, 8) for sign in (-1, 1) for side in (1, -1)]
    return near + farther


def write_chart(manifest: dict[str, Any], path: Path) -> bool:
    """Save `chart_figure` as a PNG; False when matplotlib is not installed."""
    fig = chart_figure(manifest)
    if fig is None:
        return False
    from matplotlib import pyplot as plt

    fig.savefig(path)
    plt.close(fig)
    return True


def chart_figure(manifest: dict[str, Any]) -> Any:
    """Quality (primary metric) against the in-process batch-1 p50 latency measured at build, one
    bubble per variant, its area proportional to the file's bytes; labels go where they cover no
    other label or bubble. A matplotlib Figure, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return None
    metric = manifest["primary_metric"]
    variants = manifest["variants"]
    largest = max(v["bytes"] for v in variants.values())
    # Manifest latencies are milliseconds of one ONNX Runtime run in the build process; these models
    # answer in microseconds, and through the server a request costs far more than the run.
    points = [(name, 1000.0 * v["latency"]["batch_1"]["p50_ms"], v["quality"][metric], v["bytes"])
              for name, v in variants.items() if v["quality"].get(metric) is not None]
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 2.5, max(xs) * 2.5)
    span = max(max(ys) - min(ys), MIN_QUALITY_SPAN)
    ax.set_ylim(max(ys) - 1.15 * span, max(ys) + 0.2 * span)
    teacher = variants.get("teacher", {}).get("quality", {}).get(metric)
    if teacher is not None:
        ax.axhline(teacher, color="0.5", linestyle="--", linewidth=0.8, label=f"teacher's {metric}")
    radii = []
    for _, x, y, size in points:
        area = 60 + 2400 * size / largest
        radii.append(math.sqrt(area / math.pi))
        ax.scatter([x], [y], s=area, alpha=0.45, edgecolors="black", linewidths=0.8)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    first = next(iter(variants.values()))["latency"]
    ax.set_xlabel(f"in-process ONNX Runtime latency, µs (batch 1, p50, {first['threads']} thread(s); log scale)")
    ax.set_ylabel(f"{metric} (held-out test split)")
    ax.set_title(f"{manifest['name']}: quality vs in-process latency (bubble area = file bytes)")
    ax.grid(True, which="both", alpha=0.3)
    legend = ax.legend(loc="lower right", fontsize=8, title_fontsize=7,
                       title="latency: one ONNX Runtime run at build, not a served request") if teacher is not None else None
    # Lay the figure out first: label placement works in display coordinates, which layout changes.
    fig.tight_layout()
    fig.canvas.draw()
    _place_labels(ax, points, radii, [legend] if legend is not None else [])
    return fig


def _place_labels(ax: Any, points: list[tuple[str, float, float, int]], radii: list[float], keep_clear: list[Any]) -> None:
    """Label each bubble at the nearest place (`_label_offsets`) that covers no bubble, no label placed
    before it and nothing in `keep_clear`, inside the axes; failing that, where it covers least."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_pixels = fig.dpi / 72.0
    bubbles = []
    for (_, x, y, _), radius in zip(points, radii):
        cx, cy = ax.transData.transform((x, y))
        r = radius * to_pixels
        bubbles.append((cx - r, cy - r, cx + r, cy + r))
    taken = [*bubbles, *((b.x0, b.y0, b.x1, b.y1) for b in (a.get_window_extent(renderer) for a in keep_clear))]
    frame = ax.get_window_extent(renderer)
    for (name, x, y, size), radius, own in zip(points, radii, bubbles):
        text = f"{name} ({size / 1024:,.0f} KiB)"
        best, best_cost = None, math.inf
        for dx, dy, ha, va in _label_offsets(radius):
            trial = ax.annotate(text, (x, y), fontsize=8, ha=ha, va=va, xytext=(dx, dy), textcoords="offset points")
            box = trial.get_window_extent(renderer)
            trial.remove()
            cost = sum(_overlap(box, other) for other in taken if other is not own)
            cost += 10 * (box.width * box.height - _overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1)))
            if cost < best_cost:
                best, best_cost = ((dx, dy, ha, va), box), cost
            if cost == 0:
                break
        assert best is not None
        (dx, dy, ha, va), box = best
        far = abs(dx) > radius + 4 or abs(dy) > radius + 4
        ax.annotate(text, (x, y), fontsize=8, ha=ha, va=va, xytext=(dx, dy), textcoords="offset points",
                    # A label moved away from its bubble keeps a thin line to it.
                    arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.5} if far else None)
        taken.append((box.x0, box.y0, box.x1, box.y1))


def _overlap(box: Any, other: tuple[float, float, float, float]) -> float:
    """Area shared by a matplotlib Bbox and an (x0, y0, x1, y1) box, in square pixels."""
    width = min(box.x1, other[2]) - max(box.x0, other[0])
    height = min(box.y1, other[3]) - max(box.y0, other[1])
    return max(width, 0.0) * max(height, 0.0)


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


def main(argv: list[str] | None = None) -> int:
    """Rewrite report.md and chart.png of each model folder from its manifest.json; exit 1 if one cannot be read."""
    parser = argparse.ArgumentParser(
        prog="python -m compression.report",
        description="Write report.md and chart.png of built model folders again, from their manifest.json.",
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER",
                        help="a model folder holding manifest.json, e.g. model_repository/digits")
    args = parser.parse_args(argv)
    for folder in args.folders:
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            written = write_report(manifest, folder)
        except (OSError, ValueError, KeyError) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())
            print(f"compression.report: {folder}: {reason}", file=sys.stderr)
            return 1
        print(", ".join(str(folder / name) for name in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
