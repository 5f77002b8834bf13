"""What on-the-fly job children share (server.onthefly, compression.onthefly): recipe grammar, parameters, int8
options, the model folder read and the result measured, the command line and its output lines, dying with the server."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelrepo.arrays import read_feeds
from modelrepo.files import read_manifest
from modelrepo.host import cpu_model
from modelrepo.int8 import QuantizeOptions
from modelrepo.latency import cases, default_runs, measure_latency
from modelrepo.measure import quality, run
from modelrepo.session import open_session

__all__ = ["PARAMS", "RECIPES", "STEPS", "TRAINING", "JobFolder", "Param", "child_parser", "exit_with_parent",
           "measure_result", "param_values", "parse_recipe", "quantize_options", "read_job_folder", "run_child",
           "step"]

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


def step(message: str) -> None:
    """A `step:` line: what the job does now (the server shows it as the job's step)."""
    print(f"step: {message}", flush=True)


@dataclass(frozen=True)
class JobFolder:
    """What a job reads from the model folder: its manifest, the parent's file and the held-out rows."""

    manifest: dict[str, Any]
    task: str
    input_names: list[str]
    heldout: dict[str, np.ndarray]
    labels: np.ndarray | None
    token_model: bool
    source: Path  # the parent's ONNX file

    @property
    def variants(self) -> dict[str, Any]:
        return self.manifest["variants"]

    @property
    def data(self) -> dict[str, Any]:
        """The manifest's `data` record (held-out and calibration file names)."""
        return self.manifest.get("data") or {}


def read_job_folder(folder: Path, parent: str) -> JobFolder:
    """The model folder as a job from `parent` sees it; ValueError naming the parent when it is not a variant."""
    manifest = read_manifest(folder)
    variants = manifest["variants"]
    if parent not in variants:
        raise ValueError(f"parent {parent!r} is not a variant; choose from {sorted(variants)}")
    input_names = [t["name"] for t in manifest["inputs"]]
    record = manifest.get("data") or {}
    heldout, labels = read_feeds(folder / record.get("heldout_file", "heldout.npz"), input_names)
    return JobFolder(manifest, manifest.get("task", "classification"), input_names, heldout, labels,
                     "tokenizer" in manifest, folder / variants[parent]["file"])


def measure_result(folder: Path, job: JobFolder, target: Path, name: str,
                   report: Callable[[str, float], None]) -> tuple[dict[str, float], dict[str, Any]]:
    """Quality on the held-out rows (against the teacher) and latency of the new file, as the build measures
    them; `report(step, percent)` is told each stage."""
    report("evaluating on the held-out set", 96.0)
    variants = job.variants
    teacher_file = folder / variants["teacher"]["file"] if "teacher" in variants else job.source
    measured = quality(job.task, run(open_session(target), job.heldout), job.labels,
                       run(open_session(teacher_file), job.heldout))
    report("measuring latency", 98.0)
    max_tokens = (job.manifest.get("tokenizer") or {}).get("max_length")
    latency = measure_latency({name: target}, cases(job.heldout, max_tokens), default_runs(job.token_model),
                              cpu=cpu_model())[name]
    return measured, latency


def child_parser(prog: str, description: str | None, recipe_help: str,
                 recipe_choices: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The flags every job child takes (the server passes them); a child adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-folder", type=Path, required=True)
    parser.add_argument("--parent", default="teacher")
    parser.add_argument("--name", required=True)
    parser.add_argument("--recipe", required=True, choices=recipe_choices, help=recipe_help)
    parser.add_argument("--params", default="{}", help="JSON object of string parameters")
    parser.add_argument("--out", type=Path, required=True, help="staging folder for model.onnx")
    parser.add_argument("--server-pid", type=int, default=0, help="exit when this parent process dies")
    return parser


def run_child(args: argparse.Namespace, make: Callable[[dict[str, str]], dict[str, Any]],
              describe: Callable[[Exception], str]) -> int:
    """A job child's life: die with the server, say it started (before it writes anything, so the server can
    tell a process that never ran), `make(params)`, then print the `result:` entry or one `error:` line."""
    if args.server_pid:
        exit_with_parent(args.server_pid)
    step("started")
    np.seterr(all="ignore")
    try:
        entry = make(json.loads(args.params))
    except Exception as exc:  # reported to the job as one line; the server stays up either way
        print(f"error: {describe(exc)}", flush=True)
        return 1
    print("result: " + json.dumps(entry), flush=True)
    return 0
