"""`manifest.json` schema version 1 (docs/manifest.md) and `validate()`, which every writer calls."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

__all__ = ["DATATYPES", "PRIMARY_METRIC", "ROUTING_POLICIES", "SCHEMA_VERSION", "TASKS", "TASK_QUALITY",
           "validate"]

SCHEMA_VERSION = 1

TOP_KEYS = {"schema_version", "name", "task", "created", "inputs", "outputs", "primary_metric",
            "default_variant", "routing", "data", "host", "tools", "variants"}
DATA_KEYS = {"name", "seed", "splits", "heldout_file", "calibration_file"}
HOST_KEYS = {"cpu", "cores", "int8_features"}
TOOL_KEYS = {"python", "onnx", "onnxruntime", "slimserve"}
VARIANT_KEYS = {"kind", "parent", "recipe", "file", "sha256", "bytes", "parameters", "macs",
                "quality", "latency", "build_seconds"}
LATENCY_KEYS = {"threads", "cpu", "batch_1", "batch_32"}
PERCENTILE_KEYS = {"p50_ms", "p95_ms", "runs"}
TASKS = ("classification", "embedding")
TASK_QUALITY = {"classification": {"accuracy", "agreement"},
                "embedding": {"cosine_mean", "cosine_min", "neighbour_agreement"}}
# The quality number routing budgets refer to, per task (classifiers without labels: agreement).
PRIMARY_METRIC = {"classification": "accuracy", "embedding": "cosine_mean"}
DATATYPES = {"FP32", "FP16", "FP64", "INT64", "INT32", "INT16", "INT8", "UINT8", "BOOL", "BYTES"}
ROUTING_POLICIES = {"fixed", "split", "auto"}


def _missing(where: str, obj: Any, keys: set[str]) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected an object, got {type(obj).__name__}"]
    return [f"{where}: missing {key!r}" for key in sorted(keys - obj.keys())]


def _tensors(side: str, items: Any) -> list[str]:
    if not isinstance(items, list) or not items:
        return [f"{side}: expected a non-empty list of {{name, datatype, shape}}"]
    problems = []
    for i, spec in enumerate(items):
        where = f"{side}[{i}]"
        problems += _missing(where, spec, {"name", "datatype", "shape"})
        if not isinstance(spec, dict):
            continue
        if spec.get("datatype") not in DATATYPES:
            problems.append(f"{where}: unknown datatype {spec.get('datatype')!r}")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= -1 for d in shape):
            problems.append(f"{where}.shape: expected a list of integers, -1 for dynamic axes")
    return problems


def _variant(where: str, variant: Any, task: str, primary: Any, names: set[str]) -> list[str]:
    problems = _missing(where, variant, VARIANT_KEYS)
    if problems:
        return problems
    if variant["parent"] is not None and variant["parent"] not in names:
        problems.append(f"{where}.parent: not a variant")
    file = variant["file"]
    if not isinstance(file, str) or not file:
        return problems + [f"{where}.file: expected a relative path"]
    path = PurePosixPath(file)
    if path.is_absolute() or ".." in path.parts:
        problems.append(f"{where}.file: must stay inside the model folder")
    for key in ("bytes", "parameters"):
        if type(variant[key]) is not int or variant[key] < 0:
            problems.append(f"{where}.{key}: expected a non-negative integer")
    if "batch_invariant" in variant and not isinstance(variant["batch_invariant"], bool):
        problems.append(f"{where}.batch_invariant: expected true or false")
    if task in TASK_QUALITY:
        wanted = TASK_QUALITY[task]
        if task == "classification" and primary != "accuracy":
            wanted = wanted - {"accuracy"}  # unlabelled data: agreement with the teacher only
        problems += _missing(f"{where}.quality", variant["quality"], wanted)
    problems += _missing(f"{where}.latency", variant["latency"], LATENCY_KEYS)
    if isinstance(variant["latency"], dict):
        for batch in ("batch_1", "batch_32"):
            problems += _missing(f"{where}.latency.{batch}", variant["latency"].get(batch),
                                 PERCENTILE_KEYS)
    return problems


def validate(manifest: Any) -> list[str]:
    """Every way `manifest` breaks schema version 1; an empty list means it conforms."""
    problems = _missing("manifest", manifest, TOP_KEYS)
    if problems:
        return problems
    if manifest["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version: expected {SCHEMA_VERSION}")
    task = manifest["task"]
    if task not in TASK_QUALITY:
        problems.append(f"task: unknown {task!r}; expected one of {', '.join(TASKS)}")
    problems += _tensors("inputs", manifest["inputs"]) + _tensors("outputs", manifest["outputs"])
    problems += _missing("data", manifest["data"], DATA_KEYS)
    problems += _missing("host", manifest["host"], HOST_KEYS)
    problems += _missing("tools", manifest["tools"], TOOL_KEYS)
    variants = manifest["variants"]
    if not isinstance(variants, dict) or not variants:
        return problems + ["variants: expected an object naming at least one variant"]
    if manifest["default_variant"] not in variants:
        problems.append("default_variant: not a variant")
    routing = manifest["routing"]
    if not isinstance(routing, dict):
        problems.append("routing: expected an object")
    elif routing.get("policy") not in ROUTING_POLICIES:
        problems.append(f"routing.policy: unknown {routing.get('policy')!r}")
    elif routing["policy"] == "fixed" and routing.get("variant") not in variants:
        problems.append("routing.variant: not a variant")
    tokenizer = manifest.get("tokenizer")
    if tokenizer is not None:
        problems += _missing("tokenizer", tokenizer, {"file", "max_length", "text_input"})
    # No held-out data (a model imported as found, modelrepo.triton_layout): no quality to require.
    measured = task if isinstance(manifest["data"], dict) and manifest["data"].get("heldout_file") else None
    for name, variant in variants.items():
        problems += _variant(f"variants.{name}", variant, measured, manifest["primary_metric"],
                             set(variants))
    return problems
