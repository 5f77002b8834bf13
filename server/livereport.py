"""Live quality and per-arm latency of a model's routing as CompressionService messages."""

from __future__ import annotations

from typing import Any

from protos import compression_pb2 as cpb
from server.router import Router

__all__ = ["arm_stats", "live_quality", "routing_changes"]


def live_quality(router: Router, variant: str) -> Any:
    """The variant's agreement with the teacher over the live window, with its 95% interval.
    The teacher is the reference: 1 by definition, with no rows compared."""
    metric = router.live.metric
    if variant == "teacher":
        return cpb.LiveQuality(metric=metric, compared=0, agreeing=0.0, mean=1.0, lower=1.0, upper=1.0)
    live = router.live.interval(variant)
    if live is None or live.n == 0:
        return cpb.LiveQuality(metric=metric)
    return cpb.LiveQuality(metric=metric, compared=live.n, agreeing=live.total, mean=live.mean, lower=live.lower,
                           upper=live.upper)


def arm_stats(router: Router) -> list[Any]:
    """Split: each weighted arm; auto: each available candidate (weight 1 for its choice); fixed: its variant."""
    policy = router.policy
    if policy.policy == "split":
        arms = list(policy.weights)
    elif policy.policy == "auto":
        chosen = router.choose("", {})
        arms = [(n, 1.0 if n == chosen else 0.0) for n in router.spec.variants if n not in router.unavailable]
    else:
        arms = [(router.choose("", {}), 1.0)]
    out = []
    for name, weight in arms:
        requests, p50 = router.live.latency_stats(name)
        stats = cpb.ArmStats(variant=name, weight=weight, requests=requests, live=live_quality(router, name))
        if p50 is not None:
            stats.p50_ms, stats.p50_ms_lower, stats.p50_ms_upper = (1000.0 * s for s in p50)
        out.append(stats)
    return out


def routing_changes(router: Router) -> list[Any]:
    return [cpb.RoutingChange(unix=c.unix, from_variant=c.from_variant, to_variant=c.to_variant, reason=c.reason)
            for c in list(router.live.changes)]
