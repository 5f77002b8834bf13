"""The table the build prints at the end, read back from the manifest it just wrote."""

from __future__ import annotations

from typing import Any

__all__ = ["render_table"]

HEADERS = ("variant", "accuracy", "agreement", "Δacc pts", "bytes", "% teacher", "params",
           "% teacher", "MACs", "b1 p50 ms", "b1 p95 ms", "b32 p50 ms")


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(manifest: dict[str, Any]) -> str:
    """One row per variant (and per unserved baseline), figures relative to the teacher."""
    variants = manifest["variants"]
    metric = manifest["primary_metric"]
    teacher = variants["teacher"]
    base_q = teacher["quality"].get(metric)

    def row(name: str, quality: dict[str, float], size: int | None, params: int | None,
            macs: int | None, latency: dict[str, Any] | None) -> tuple[str, ...]:
        value = quality.get(metric)
        delta = None if value is None or base_q is None else 100.0 * (value - base_q)
        lat = latency or {}
        return (name, _num(value, ".4f"), _num(quality.get("agreement"), ".4f"),
                _num(delta, "+.2f"), _num(size, ",d"),
                "-" if size is None else _pct(size, teacher["bytes"]),
                _num(params, ",d"), "-" if params is None else _pct(params, teacher["parameters"]),
                _num(macs, ",d"),
                _num(lat.get("batch_1", {}).get("p50_ms"), ".3f"),
                _num(lat.get("batch_1", {}).get("p95_ms"), ".3f"),
                _num(lat.get("batch_32", {}).get("p50_ms"), ".3f"))

    rows = [row(name, v["quality"], v["bytes"], v["parameters"], v["macs"], v["latency"])
            for name, v in variants.items()]
    for name, b in manifest.get("baselines", {}).items():
        rows.append(row(f"({name})", b.get("quality", {}), None, b.get("parameters"), None, None))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(HEADERS, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    first = next(iter(variants.values()))["latency"]
    lines.append(f"latency: ONNX Runtime CPU, {first['threads']} thread(s), {first['cpu']}; "
                 f"quality on the held-out test split; (baselines) are not served")
    return "\n".join(lines)
