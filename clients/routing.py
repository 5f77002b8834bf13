"""The `routing` command: show a model's routing (choice, arms' live quality and latency, changes), or replace it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping, TextIO

from clients.report import fmt, table

if TYPE_CHECKING:
    from clients.client import Client

__all__ = ["format_routing", "run_routing"]


def _interval(mean: float, lower: float, upper: float, digits: int = 3) -> str:
    return f"{fmt(mean, digits)} [{fmt(lower, digits)}, {fmt(upper, digits)}]"


def format_routing(routing: Any) -> str:
    """A `slimserve.v1.Routing` as text: the policy line, one row per arm, then the latest changes."""
    r = routing
    settings = []
    if r.policy == "fixed":
        settings.append(f"variant {r.variant}")
    if r.policy == "auto":
        settings.append(f"max_drop {r.max_drop:g}")
    if r.sticky_parameter:
        settings.append(f"sticky on {r.sticky_parameter}")
    settings.append(f"shadow {r.shadow_fraction:g}")
    settings.append(f"min_samples {r.min_samples}")
    lines = [f"{r.model}: policy {r.policy} ({', '.join(settings)})" + (f", chosen {r.chosen}" if r.chosen else "")]
    if r.demoted:
        lines.append(f"demoted: {', '.join(r.demoted)}")
    rows = []
    for a in r.arms:
        live = a.live
        quality = (_interval(live.mean, live.lower, live.upper) + f" over {live.compared}" if live.compared
                   else ("reference" if a.variant == "teacher" else "n/a"))
        latency = _interval(a.p50_ms, a.p50_ms_lower, a.p50_ms_upper, 2) if a.requests else "n/a"
        rows.append([a.variant, fmt(a.weight, 2), str(a.requests), latency, quality])
    if rows:
        metric = next((a.live.metric for a in r.arms if a.live.metric), "agreement")
        lines.append(table(["variant", "weight", "requests", "p50 ms [95%]", f"live {metric} [95%]"], rows))
    for c in r.changes:
        stamp = time.strftime("%H:%M:%S", time.localtime(c.unix))
        lines.append(f"{stamp}  {c.from_variant} -> {c.to_variant}  {c.reason}")
    return "\n".join(lines)


def run_routing(client: Client, model: str, out: TextIO, policy: str | None = None,
                settings: Mapping[str, Any] | None = None) -> int:
    """Print the routing of `model`; with `policy`, first replace it (SetRouting) with `settings`."""
    routing = client.routing(model) if policy is None else client.set_routing(model, policy, **(settings or {}))
    print(format_routing(routing), file=out)
    return 0
