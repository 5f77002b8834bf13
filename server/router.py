"""Chooses the variant for a request: explicit `model_version`, else the model's routing policy.

Policies (manifest `routing`, changeable at run time):
- `fixed`:  always `variant`.
- `split`:  weighted A/B over `weights` {variant: weight}; with `sticky_parameter`, the same value of
            that request parameter (e.g. a user id) always lands on the same variant.
- `auto`:   the fastest variant (build-time p50 at batch 1, or live p50 once measured) whose drop in
            the model's primary metric against the teacher is at most `max_drop`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Mapping

from server.errors import InvalidInput, NotFound, Unavailable
from server.repository import ModelSpec

__all__ = ["Router", "RoutingPolicy", "parse_policy"]

POLICIES = ("fixed", "split", "auto")


@dataclass(frozen=True)
class RoutingPolicy:
    """A validated routing policy for one model."""

    policy: str
    variant: str | None = None
    weights: tuple[tuple[str, float], ...] = ()
    sticky_parameter: str | None = None
    max_drop: float = 0.01
    shadow_fraction: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{field}={value!r:.40}: must be a number")
    return float(value)


def parse_policy(routing: Mapping[str, Any], spec: ModelSpec) -> RoutingPolicy:
    """Validate a routing dict against the model's variants; errors name the field to fix."""
    policy = str(routing.get("policy", "fixed"))
    known = sorted(spec.variants)
    shadow = routing.get("shadow") or {}
    fraction = _number(shadow.get("fraction", 0.0), "routing.shadow.fraction") if isinstance(shadow, Mapping) else 0.0
    if not 0.0 <= fraction <= 1.0:
        raise InvalidInput(f"routing.shadow.fraction={fraction}: must be between 0 and 1")
    if policy == "fixed":
        variant = str(routing.get("variant") or spec.default_variant)
        if variant not in spec.variants:
            raise InvalidInput(f"routing.variant={variant!r} is not a variant of '{spec.name}'; choose from {known}")
        return RoutingPolicy("fixed", variant=variant, shadow_fraction=fraction, raw=dict(routing))
    if policy == "split":
        weights = routing.get("weights")
        if not isinstance(weights, Mapping) or not weights:
            raise InvalidInput("routing.weights: a split needs {variant: weight, ...}")
        for name, w in weights.items():
            if name not in spec.variants:
                raise InvalidInput(f"routing.weights: {name!r} is not a variant of '{spec.name}'; choose from {known}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise InvalidInput(f"routing.weights[{name!r}]={w!r}: weights must be non-negative numbers")
        total = float(sum(weights.values()))
        if total <= 0:
            raise InvalidInput("routing.weights: at least one weight must be positive")
        return RoutingPolicy(
            "split",
            weights=tuple((n, float(w) / total) for n, w in sorted(weights.items())),
            sticky_parameter=routing.get("sticky_parameter"),
            shadow_fraction=fraction,
            raw=dict(routing),
        )
    if policy == "auto":
        max_drop = _number(routing.get("max_drop", 0.01), "routing.max_drop")
        if max_drop < 0:
            raise InvalidInput(f"routing.max_drop={max_drop}: must be 0 or more")
        return RoutingPolicy("auto", max_drop=max_drop, shadow_fraction=fraction, raw=dict(routing))
    raise InvalidInput(f"routing.policy={policy!r}: use one of {', '.join(POLICIES)}")


class Router:
    """Routing for one model; `choose` runs on the request path, so it only reads precomputed state."""

    def __init__(
        self,
        spec: ModelSpec,
        policy: RoutingPolicy,
        rng: random.Random | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.policy = policy
        self._rng = rng or random.Random()
        # Variants whose file failed to load (name -> reason): routing never picks them.
        self.unavailable = dict(unavailable or {})
        available = [n for n in spec.variants if n not in self.unavailable]
        preferred = (spec.default_variant, "teacher", *sorted(available))
        self.fallback = next((n for n in preferred if n in available), spec.default_variant)
        self._weights = tuple((n, w) for n, w in policy.weights if n not in self.unavailable)
        self._auto_choice = self._pick_auto() if policy.policy == "auto" else None

    def _pick_auto(self) -> str:
        metric = self.spec.primary_metric
        teacher = self.spec.variants.get("teacher")
        reference = teacher.quality.get(metric) if teacher else None
        best, best_latency = self.fallback, float("inf")
        for name, v in self.spec.variants.items():
            if name in self.unavailable:
                continue
            quality = v.quality.get(metric)
            if reference is not None and (quality is None or reference - quality > self.policy.max_drop):
                continue
            p50 = (v.latency.get("batch_1") or {}).get("p50_ms")
            if isinstance(p50, (int, float)) and p50 < best_latency:
                best, best_latency = name, float(p50)
        return best

    def choose(self, requested: str, parameters: Mapping[str, Any]) -> str:
        if requested:
            if requested not in self.spec.variants:
                raise NotFound(
                    f"model '{self.spec.name}' has no variant '{requested:.100}'; "
                    f"set model_version to one of {sorted(self.spec.variants)} or leave it empty"
                )
            if requested in self.unavailable:
                raise Unavailable(
                    f"variant '{requested}' of model '{self.spec.name}' is unavailable: "
                    f"{self.unavailable[requested]}; leave model_version empty to route to a working variant"
                )
            return requested
        p = self.policy
        if p.policy == "fixed":
            chosen = p.variant or self.spec.default_variant
            return self.fallback if chosen in self.unavailable else chosen
        if p.policy == "auto":
            return self._auto_choice or self.fallback
        if not self._weights:  # every arm of the split is unavailable
            return self.fallback
        if p.sticky_parameter and p.sticky_parameter in parameters:
            key = str(parameters[p.sticky_parameter]).encode()
            point = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
        else:
            point = self._rng.random()
        # Arms left out (unavailable) give their share to the others in proportion.
        point *= sum(w for _, w in self._weights)
        cumulative = 0.0
        for name, weight in self._weights:
            cumulative += weight
            if point < cumulative:
                return name
        return self._weights[-1][0]

    def wants_shadow(self, variant: str) -> bool:
        """Mirror to the teacher? Only for non-teacher variants, with the configured probability."""
        f = self.policy.shadow_fraction
        teacher_up = "teacher" in self.spec.variants and "teacher" not in self.unavailable
        return f > 0 and variant != "teacher" and teacher_up and self._rng.random() < f
