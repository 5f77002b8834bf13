"""Chooses the variant for a request: explicit `model_version`, else the model's routing policy.

Policies (manifest `routing`, changeable at run time):
- `fixed`:  always `variant`.
- `split`:  weighted A/B over `weights` {variant: weight}; with `sticky_parameter`, the same value of
            that request parameter (e.g. a user id) always lands on the same variant.
- `auto`:   the fastest variant (build-time p50 at batch 1) within the quality budget: its drop in the
            model's primary metric against the teacher is at most `max_drop` at build time, until shadow
            traffic has compared `min_samples` rows of it with the teacher; from then on its live 95% interval
            of agreement (cosine for embeddings) decides against 1 - `max_drop` (server.shadow.ModelLive).
            With `shadow`, auto also mirrors to the candidates faster than its choice, so a demoted variant
            keeps being measured and can be promoted again.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from server.errors import InvalidInput, NotFound, Unavailable
from server.repository import ModelSpec
from server.shadow import ModelLive, RoutingChange

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
    min_samples: int = 200  # auto: live rows before a variant's live interval replaces its build-time quality
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
    min_samples = routing.get("min_samples", 200)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise InvalidInput(f"routing.min_samples={min_samples!r:.40}: must be a whole number, 1 or more")
    if policy == "fixed":
        variant = str(routing.get("variant") or spec.default_variant)
        if variant not in spec.variants:
            raise InvalidInput(f"routing.variant={variant!r} is not a variant of '{spec.name}'; choose from {known}")
        return RoutingPolicy("fixed", variant=variant, shadow_fraction=fraction, min_samples=min_samples,
                             raw=dict(routing))
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
            min_samples=min_samples,
            raw=dict(routing),
        )
    if policy == "auto":
        max_drop = _number(routing.get("max_drop", 0.01), "routing.max_drop")
        if max_drop < 0:
            raise InvalidInput(f"routing.max_drop={max_drop}: must be 0 or more")
        return RoutingPolicy("auto", max_drop=max_drop, shadow_fraction=fraction, min_samples=min_samples,
                             raw=dict(routing))
    raise InvalidInput(f"routing.policy={policy!r}: use one of {', '.join(POLICIES)}")


class Router:
    """Routing for one model; `choose` runs on the request path, so it only reads precomputed state."""

    def __init__(
        self,
        spec: ModelSpec,
        policy: RoutingPolicy,
        rng: random.Random | None = None,
        unavailable: Mapping[str, str] | None = None,
        live: ModelLive | None = None,
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
        self._teacher_up = "teacher" in spec.variants and "teacher" not in self.unavailable
        # Live quality outlives this Router (the registry keeps one per model); alone (tests), keep a private one.
        self.live = live if live is not None else ModelLive(spec.name, threading.Lock())
        self.live.configure(spec.task, {n: v.sha256 for n, v in spec.variants.items()}, policy.min_samples,
                            self.budget)
        self._auto_choice = self._pick_auto() if policy.policy == "auto" else None
        self._candidates = self._faster_than(self._auto_choice)

    @property
    def budget(self) -> float:
        """The live agreement (cosine for embeddings) a variant must keep with the teacher: 1 - max_drop.
        Agreement bounds the accuracy drop (a variant loses accuracy only where it disagrees)."""
        return 1.0 - self.policy.max_drop

    def _p50(self, name: str) -> float:
        p50 = (self.spec.variants[name].latency.get("batch_1") or {}).get("p50_ms")
        return float(p50) if isinstance(p50, (int, float)) else float("inf")

    def _meets_budget(self, name: str, reference: float | None) -> bool:
        if name == "teacher":
            return True
        verdict = self.live.verdict(name)
        if verdict is not None:  # enough live evidence has decided (with hysteresis, see ModelLive)
            return verdict
        quality = self.spec.variants[name].quality.get(self.spec.primary_metric)
        return reference is None or (quality is not None and reference - quality <= self.policy.max_drop)

    def _pick_auto(self) -> str:
        teacher = self.spec.variants.get("teacher")
        reference = teacher.quality.get(self.spec.primary_metric) if teacher else None
        best, best_latency = self.fallback, float("inf")
        for name in self.spec.variants:
            if name in self.unavailable or not self._meets_budget(name, reference):
                continue
            p50 = self._p50(name)
            if p50 < best_latency:
                best, best_latency = name, p50
        return best

    def _faster_than(self, chosen: str | None) -> tuple[str, ...]:
        """Variants that could take over from `chosen` (faster at build time): auto keeps measuring them."""
        if chosen is None:
            return ()
        limit = self._p50(chosen) if chosen in self.spec.variants else float("inf")
        return tuple(n for n in self.spec.variants
                     if n != "teacher" and n not in self.unavailable and self._p50(n) < limit)

    def refresh(self) -> RoutingChange | None:
        """After a standing changed (off the request path): re-pick `auto`, and record a change of choice."""
        if self.policy.policy != "auto":
            return None
        old, new = self._auto_choice or self.fallback, self._pick_auto()
        if new == old:
            return None
        change = RoutingChange(time.time(), old, new, self._reason(old, new))
        self.live.changes.append(change)
        self._auto_choice, self._candidates = new, self._faster_than(new)
        return change

    def _reason(self, old: str, new: str) -> str:
        metric, budget = self.live.metric, self.budget
        if self.live.verdict(old) is False and (live := self.live.interval(old)) is not None:
            return (f"demoted {old}: live {metric} upper bound {live.upper:.4f} < {budget:.4f} "
                    f"over the last {live.n} rows")
        if self.live.verdict(new) is True and (live := self.live.interval(new)) is not None:
            return (f"promoted {new}: live {metric} lower bound {live.lower:.4f} >= {budget:.4f} "
                    f"over the last {live.n} rows")
        return f"live quality changed: {new} is now the fastest variant within the budget"

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

    def shadow_plan(self, variant: str) -> tuple[str, ...]:
        """Variants to compare with the teacher after replying with `variant` (empty: none), for a share
        `shadow.fraction` of requests: the one that answered unless it is the teacher, and under `auto`
        also the candidates faster than its choice (the teacher's output is computed once for all)."""
        f = self.policy.shadow_fraction
        if f <= 0 or not self._teacher_up or self._rng.random() >= f:
            return ()
        answered = (variant,) if variant != "teacher" else ()
        if self.policy.policy != "auto":
            return answered
        return answered + tuple(c for c in self._candidates if c != variant)
