"""What on-the-fly job children share (server.onthefly, compression.onthefly): recipe grammar, parameters, int8 options, dying with the server."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from modelrepo.int8 import QuantizeOptions

__all__ = ["PARAMS", "RECIPES", "STEPS", "TRAINING", "Param", "exit_with_parent", "param_values", "parse_recipe",
           "quantize_options"]

RECIPES = ("int8_static", "int8_dynamic")  # made here, without torch
TRAINING = ("distilled", "pruned")  # need torch: made by `python -m compression.onthefly`
STEPS = (*TRAINING, "shared", *RECIPES)


@dataclass(frozen=True)
class Param:
    """One job parameter: its type, default and allowed values (checked when the job is asked for)."""

    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


_SEED = Param(int, 0, 0, 2**31 - 1)
# The parameters each step takes (CreateVariantRequest.params); a chain takes the union of its steps'.
# Defaults are the build's (compression.cli), so a job makes what `compression.build` would.
PARAMS: dict[str, dict[str, Param]] = {
    "int8_static": {"per_channel": Param(bool, True), "calibration_samples": Param(int, 256, 1, 1 << 20),
                    "method": Param(str, "minmax", choices=("minmax", "entropy", "percentile"))},
    "int8_dynamic": {"per_channel": Param(bool, True)},
    "distilled": {"epochs": Param(int, 150, 1, 10**7), "lr": Param(float, 1e-3, 1e-8, 10.0),
                  "batch_size": Param(int, 64, 1, 65536), "patience": Param(int, None, 1, 10**7), "seed": _SEED,
                  "temperature": Param(float, 4.0, 1e-3, 1e3), "alpha": Param(float, 0.9, 0.0, 1.0),
                  "loss": Param(str, "auto", choices=("auto", "kd", "mse", "cosine")),
                  "width": Param(float, 0.25, 0.01, 1.0)},
    "pruned": {"amount": Param(float, 0.5, 0.01, 0.99), "prune_steps": Param(int, 1, 1, 100),
               "importance": Param(str, "magnitude-l2",
                                   choices=("magnitude-l2", "magnitude-l1", "lamp", "fpgm", "taylor")),
               "finetune_epochs": Param(int, 40, 0, 10**7), "finetune_lr": Param(float, 5e-4, 1e-8, 10.0),
               "seed": _SEED},
    "shared": {"bits": Param(int, 4, 1, 8), "min_elements": Param(int, 1024, 1, 2**40)},
}
# A chain runs torch steps first (on the module), then the ONNX-only ones: weight sharing, then int8.
_RANK = {"distilled": 0, "pruned": 0, "shared": 1, "int8_static": 2, "int8_dynamic": 2}
TRUE = ("1", "true", "yes")
FALSE = ("0", "false", "no")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def parse_recipe(recipe: str, params: dict[str, str]) -> list[str]:
    """The steps of `recipe` (`distilled`, `distilled+int8_dynamic`, ...); ValueError naming the field to fix."""
    steps = recipe.split("+") if recipe else []
    chains = "distilled, pruned, shared, int8_static, int8_dynamic or a chain such as distilled+int8_dynamic"
    unknown = [s for s in steps if s not in STEPS]
    if not steps or unknown:
        raise ValueError(f"recipe {recipe!r}: unknown step {unknown[0] if unknown else recipe!r}; use {chains}")
    ranks = [_RANK[s] for s in steps]
    if len(set(steps)) != len(steps) or ranks != sorted(ranks) or ranks.count(2) > 1:
        raise ValueError(f"recipe {recipe!r}: each step once, training (distilled, pruned) before shared before "
                         "one int8 step, e.g. pruned+int8_static")
    allowed = sorted({key for s in steps for key in PARAMS[s]})
    for key in params:
        if key not in allowed:
            raise ValueError(f"params.{key}: recipe {recipe!r} takes {', '.join(allowed)}")
    param_values(steps, params)
    return steps


def _value(key: str, raw: str, param: Param) -> Any:
    if param.kind is bool:
        if raw.lower() not in TRUE + FALSE:
            raise ValueError(f"params.{key}={raw!r:.40}: use true or false")
        return raw.lower() in TRUE
    if param.kind is str:
        if raw.lower() not in param.choices:
            raise ValueError(f"params.{key}={raw!r:.40}: use {', '.join(param.choices)}")
        return raw.lower()
    try:
        value = param.kind(raw)
    except ValueError:
        raise ValueError(f"params.{key}={raw!r:.40}: expected {'an integer' if param.kind is int else 'a number'}") from None
    if param.low is not None and param.high is not None and not param.low <= value <= param.high:
        raise ValueError(f"params.{key}={raw!r:.40}: use a value from {param.low:g} to {param.high:g}")
    return value


def param_values(steps: list[str], params: dict[str, str]) -> dict[str, Any]:
    """Every parameter of `steps`, typed: the given value, else the default; ValueError naming a bad one."""
    values: dict[str, Any] = {}
    for step in steps:
        for key, param in PARAMS[step].items():
            values[key] = _value(key, params[key], param) if key in params else param.default
    return values


def quantize_options(recipe: str, params: dict[str, str], token_model: bool) -> QuantizeOptions:
    """The int8 step's options from the job's parameters (those of other steps in a chain are ignored)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: use one of {', '.join(RECIPES)}")
    values = param_values([recipe], {k: v for k, v in params.items() if k in PARAMS[recipe]})
    if recipe == "int8_dynamic":
        # Transformers: weights of the MatMuls and the embedding table (the build's MiniLM recipe).
        extra: dict[str, Any] = ({"op_types": ("MatMul", "Gather"), "matmul_const_b_only": True,
                                  "preprocess": False} if token_model else {})
        return QuantizeOptions(mode="dynamic", per_channel=values["per_channel"], **extra)
    return QuantizeOptions(mode="static", per_channel=values["per_channel"], calibration_method=values["method"],
                           calibration_samples=values["calibration_samples"])


def exit_with_parent(server_pid: int) -> None:
    """Be killed when the server that started this job dies (Linux): an orphan would quantize for
    nobody, into a staging folder the next server start removes."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != server_pid:  # it died before the request above took effect
        raise SystemExit(1)
