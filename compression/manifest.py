"""`manifest.json` schema version 1 (docs/manifest.md): tensor specs, validation, atomic writing."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["PRIMARY_METRIC", "SCHEMA_VERSION", "TensorSpec", "sha256_file", "validate", "write_json_atomic"]

SCHEMA_VERSION = 1

# Required keys, straight from docs/manifest.md; the build checks its own output against them.
TOP_KEYS = {"schema_version", "name", "task", "created", "inputs", "outputs", "primary_metric",
            "default_variant", "routing", "data", "host", "tools", "variants"}
DATA_KEYS = {"name", "seed", "splits", "heldout_file", "calibration_file"}
HOST_KEYS = {"cpu", "cores", "int8_features"}
TOOL_KEYS = {"python", "torch", "onnx", "onnxruntime", "torch_pruning", "slimserve"}
VARIANT_KEYS = {"kind", "parent", "recipe", "file", "sha256", "bytes", "parameters", "macs",
                "quality", "latency", "build_seconds"}
LATENCY_KEYS = {"threads", "cpu", "batch_1", "batch_32"}
PERCENTILE_KEYS = {"p50_ms", "p95_ms", "runs"}
TASK_QUALITY = {"classification": {"accuracy", "agreement"},
                "embedding": {"cosine_mean", "cosine_min", "neighbour_agreement"}}
# The quality number routing budgets refer to, per task (classifiers without labels: agreement).
PRIMARY_METRIC = {"classification": "accuracy", "embedding": "cosine_mean"}
DATATYPES = {"FP32", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES"}
ROUTING_POLICIES = {"fixed", "split", "auto"}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the manifest records it (KServe datatype, -1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _missing(where: str, obj: Any, keys: set[str]) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected an object"]
    return [f"{where}: missing {key!r}" for key in sorted(keys - obj.keys())]


def validate(manifest: dict[str, Any]) -> list[str]:
    """Every way `manifest` breaks schema version 1; an empty list means it conforms."""
    problems = _missing("manifest", manifest, TOP_KEYS)
    if problems:
        return problems
    if manifest["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version: expected {SCHEMA_VERSION}")
    task = manifest["task"]
    if task not in TASK_QUALITY:
        problems.append(f"task: unknown {task!r}")
    for side in ("inputs", "outputs"):
        for i, spec in enumerate(manifest[side]):
            problems += _missing(f"{side}[{i}]", spec, {"name", "datatype", "shape"})
            if isinstance(spec, dict) and spec.get("datatype") not in DATATYPES:
                problems.append(f"{side}[{i}]: unknown datatype {spec.get('datatype')!r}")
    problems += _missing("data", manifest["data"], DATA_KEYS)
    problems += _missing("host", manifest["host"], HOST_KEYS)
    problems += _missing("tools", manifest["tools"], TOOL_KEYS)
    variants = manifest["variants"]
    if manifest["default_variant"] not in variants:
        problems.append("default_variant: not a variant")
    routing = manifest["routing"]
    if routing.get("policy") not in ROUTING_POLICIES:
        problems.append(f"routing.policy: unknown {routing.get('policy')!r}")
    elif routing["policy"] == "fixed" and routing.get("variant") not in variants:
        problems.append("routing.variant: not a variant")
    for name, variant in variants.items():
        where = f"variants.{name}"
        problems += _missing(where, variant, VARIANT_KEYS)
        if problems:
            continue
        if variant["parent"] is not None and variant["parent"] not in variants:
            problems.append(f"{where}.parent: not a variant")
        file = PurePosixPath(variant["file"])
        if file.is_absolute() or ".." in file.parts:
            problems.append(f"{where}.file: must stay inside the model folder")
        if task in TASK_QUALITY:
            wanted = TASK_QUALITY[task]
            if task == "classification" and manifest["primary_metric"] != "accuracy":
                wanted = wanted - {"accuracy"}  # unlabelled data: agreement with the teacher only
            problems += _missing(f"{where}.quality", variant["quality"], wanted)
        problems += _missing(f"{where}.latency", variant["latency"], LATENCY_KEYS)
        for batch in ("batch_1", "batch_32"):
            problems += _missing(f"{where}.latency.{batch}", variant["latency"].get(batch),
                                 PERCENTILE_KEYS)
    return problems


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync it, then `os.replace` it into place,
    so a reader sees the old file or the whole new one, never a torn write."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; the server may run as another user and must read it.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
