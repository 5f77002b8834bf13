"""A Triton-layout ONNX model folder (`config.pbtxt`, `<version>/model.onnx`, or a bare `model.onnx`) as a manifest.

The manifest it returns is measured, never invented: inputs and outputs from the ONNX graph (checked
against `config.pbtxt` where there is one), sha256, bytes, parameters, MACs and latency (batch 1
and 32, seeded random inputs) per version; quality stays empty, as there is no held-out data to
measure it on (`data.heldout_file` null). Each version folder is a variant named by its number; the
default is the highest (Triton's latest).
Task rule: "embedding" when the first output is named like one (`EMBEDDING_NAMES`) or holds a vector
per token (rank 3 or more); otherwise "classification" (one score vector per row).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelrepo import ManifestError
from modelrepo.files import sha256_file
from modelrepo.host import host_record, tool_versions
from modelrepo.onnxinfo import onnx_macs, onnx_parameters
from modelrepo.pbtxt import parse_pbtxt
from modelrepo.schema import PRIMARY_METRIC, SCHEMA_VERSION

__all__ = ["CONFIG", "LAYOUT", "ONNX_FILE", "derive_manifest", "is_layout_model", "read_config", "task_of",
           "variant_files"]

CONFIG = "config.pbtxt"
ONNX_FILE = "model.onnx"  # Triton's default_model_filename for the onnxruntime backend
LAYOUT = "triton"  # the manifest's "layout" key: this manifest is derived from the folder and follows it
EMBEDDING_NAMES = ("embedding", "embeddings", "sentence_embedding", "pooler_output", "last_hidden_state")
# ONNX element types the KServe protocol can carry, by name; Triton's config says TYPE_<name>.
ONNX_TYPES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.DOUBLE: "FP64",
              onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT16: "INT16",
              onnx.TensorProto.INT8: "INT8", onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BOOL: "BOOL",
              onnx.TensorProto.STRING: "BYTES"}
CONFIG_TYPES = {f"TYPE_{t}": t for t in ONNX_TYPES.values()} | {"TYPE_STRING": "BYTES"}
LATENCY_BUDGET_S = 0.3  # per variant and batch: enough runs for a p50 of a small model, bounded for a big one
RANDOM_AXIS = 16  # dynamic non-batch axes (sequence length, image side) in the latency inputs


def _version_dirs(folder: Path, filename: str) -> dict[str, Path]:
    """Numeric sub-folders holding the model file, by version number as text."""
    out = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return {}
    for entry in entries:
        if entry.name.isdigit() and entry.is_dir() and (Path(entry.path) / filename).is_file():
            out[str(int(entry.name))] = Path(entry.path) / filename
    return out


def is_layout_model(folder: Path) -> bool:
    """A Triton-layout ONNX model: a bare `model.onnx`, or a numeric version folder holding one
    (or the file `config.pbtxt` names). Never raises: an unreadable entry is not a model."""
    try:
        if (folder / ONNX_FILE).is_file():
            return True
        filename = ONNX_FILE
        if (folder / CONFIG).is_file():
            filename = _config_filename(folder)
        return bool(_version_dirs(folder, filename))
    except (OSError, ValueError, ManifestError):
        return False


def _config_filename(folder: Path) -> str:
    """`default_model_filename` of config.pbtxt, the cheap way (the listing must not parse configs)."""
    try:
        text = (folder / CONFIG).read_text(encoding="utf-8", errors="replace")[:1 << 20]
    except OSError:
        return ONNX_FILE
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "default_model_filename":
            name = value.strip().strip("\"'")
            if name and "/" not in name and "\\" not in name and not name.startswith("."):
                return name
    return ONNX_FILE


def _one(fields: dict[str, list[Any]], key: str, where: str, kind: type, default: Any = None) -> Any:
    values = fields.get(key) or []
    if len(values) > 1:
        raise ManifestError(f"{where}: '{key}' is given {len(values)} times; give it once")
    if not values:
        return default
    if not isinstance(values[0], kind) or isinstance(values[0], bool) and kind is not bool:
        raise ManifestError(f"{where}: '{key}' must be a {kind.__name__}, got {values[0]!r:.40}")
    return values[0]


def read_config(folder: Path, name: str) -> dict[str, Any] | None:
    """The fields of config.pbtxt this server uses, checked; None when there is no config."""
    path = folder / CONFIG
    if not path.is_file():
        return None
    where = f"{name}/{CONFIG}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: cannot read it ({exc}); fix the file or remove it") from None
    fields = parse_pbtxt(text, where)
    config_name = _one(fields, "name", where, str)
    if config_name is not None and config_name != name:
        raise ManifestError(f"{where}: name {config_name!r:.60} differs from the folder name {name!r}; "
                            f"make them equal (the folder names the model)")
    platform = _one(fields, "platform", where, str) or _one(fields, "backend", where, str)
    if platform not in (None, "onnxruntime_onnx", "onnxruntime"):
        raise ManifestError(f"{where}: platform/backend {platform!r:.40} is not served here; "
                            f"only ONNX models (onnxruntime_onnx) are")
    max_batch = _one(fields, "max_batch_size", where, int, 0)
    if max_batch < 0:
        raise ManifestError(f"{where}: max_batch_size must be 0 or more, got {max_batch}")
    tensors: dict[str, list[dict[str, Any]]] = {}
    for side in ("input", "output"):
        tensors[side] = []
        for i, item in enumerate(fields.get(side) or []):
            at = f"{where}: {side}[{i}]"
            if not isinstance(item, dict):
                raise ManifestError(f"{at}: must be a message {{ name, data_type, dims }}")
            tname = _one(item, "name", at, str)
            if not tname:
                raise ManifestError(f"{at}: 'name' is missing")
            dtype = _one(item, "data_type", at, str)
            if dtype is not None and dtype not in CONFIG_TYPES:
                raise ManifestError(f"{at} ({tname}): data_type {dtype!r:.30} is unknown; use one of "
                                    f"{', '.join(sorted(CONFIG_TYPES))}")
            dims = item.get("dims") or []
            if not all(type(d) is int and d >= -1 for d in dims):
                raise ManifestError(f"{at} ({tname}): dims must be integers, -1 for a dynamic axis")
            # With batching on, Triton's dims leave the batch axis out.
            shape = ([-1] if max_batch > 0 else []) + list(dims)
            tensors[side].append({"name": tname, "datatype": CONFIG_TYPES.get(dtype or ""), "shape": shape,
                                  "has_dims": "dims" in item})
    policy = _one(fields, "version_policy", where, dict)
    filename = _one(fields, "default_model_filename", where, str) or ONNX_FILE
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise ManifestError(f"{where}: default_model_filename {filename!r:.60} must be a plain file name")
    return {"max_batch_size": max_batch, "input": tensors["input"], "output": tensors["output"],
            "version_policy": policy, "default_model_filename": filename}


def _policy_versions(policy: dict[str, Any] | None, found: list[int], where: str) -> list[int]:
    """Versions to serve. No policy: all of them (each version a variant); else Triton's all / latest / specific."""
    if not policy or "all" in policy:
        return found
    if "latest" in policy:
        latest = policy["latest"][0] if isinstance(policy["latest"][0], dict) else {}
        count = _one(latest, "num_versions", f"{where}: version_policy.latest", int, 1)
        return sorted(found)[-max(count, 1):]
    if "specific" in policy:
        specific = policy["specific"][0] if isinstance(policy["specific"][0], dict) else {}
        wanted = [v for v in specific.get("versions") or [] if type(v) is int]
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise ManifestError(f"{where}: version_policy names versions {missing} that have no folder with a model file")
        return sorted(wanted)
    raise ManifestError(f"{where}: version_policy must be all, latest or specific")


def variant_files(folder: Path, config: dict[str, Any] | None) -> dict[str, Path]:
    """Variant name → ONNX file: each served version folder, or a bare `model.onnx` as version "1"."""
    filename = config["default_model_filename"] if config else ONNX_FILE
    versions = _version_dirs(folder, filename)
    if versions:
        served = _policy_versions(config["version_policy"] if config else None, sorted(int(v) for v in versions),
                                  f"{folder.name}/{CONFIG}")
        return {str(v): versions[str(v)] for v in served}
    if (folder / filename).is_file():
        return {"1": folder / filename}
    raise ManifestError(f"model folder {folder}: no {filename} in it nor in a numeric version folder")


def _check_external_data(path: Path, model: onnx.ModelProto, label: str) -> None:
    """Weights kept in external files must stay in the variant's folder: nothing outside is ever read."""
    base = path.parent.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if not location or not (base / location).resolve().is_relative_to(base):
                raise ManifestError(f"{label}: tensor {tensor.name!r:.60} keeps its data at {location!r:.60}, "
                                    f"outside its version folder; refusing to load it")


def _graph_tensors(path: Path, label: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs (initializers left out) and outputs of the ONNX graph as {name, datatype, shape}."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: whatever the bytes are, not ONNX
        raise ManifestError(f"{label}: not a readable ONNX file ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}); "
                            f"replace it with a valid model.onnx") from None
    _check_external_data(path, model, label)
    weights = {t.name for t in model.graph.initializer}
    sides = []
    for values in ([v for v in model.graph.input if v.name not in weights], list(model.graph.output)):
        tensors = []
        for value in values:
            kind = value.type.tensor_type
            if not value.type.HasField("tensor_type") or kind.elem_type not in ONNX_TYPES:
                raise ManifestError(f"{label}: {value.name!r:.60} is not a tensor of a type the KServe protocol "
                                    f"carries ({', '.join(sorted(set(ONNX_TYPES.values())))})")
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in kind.shape.dim]
            tensors.append({"name": value.name, "datatype": ONNX_TYPES[kind.elem_type], "shape": shape,
                            "has_shape": kind.HasField("shape")})
        sides.append(tensors)
    if not sides[0] or not sides[1]:
        raise ManifestError(f"{label}: the graph has no {'inputs' if not sides[0] else 'outputs'} to serve")
    return sides[0], sides[1]


def _merge(graph: list[dict[str, Any]], config: list[dict[str, Any]] | None, side: str, label: str,
           max_batch: int) -> list[dict[str, Any]]:
    """The graph's tensors, each checked against (and made as specific as) its config.pbtxt entry."""
    by_name = {t["name"]: t for t in graph}
    if config:
        unknown = [c["name"] for c in config if c["name"] not in by_name]
        if unknown:
            raise ManifestError(f"{label}: config.pbtxt {side} {unknown[0]!r:.60} is not in the ONNX graph, which has "
                                f"{sorted(by_name)}; rename it in config.pbtxt")
        if side == "input" and len(config) != len(graph):
            missing = sorted(set(by_name) - {c["name"] for c in config})
            raise ManifestError(f"{label}: config.pbtxt lists no input {missing[0]!r:.60}, which the ONNX graph "
                                f"needs; add it to config.pbtxt")
    out = []
    for tensor in graph:
        shape = list(tensor["shape"])
        entry = next((c for c in config or () if c["name"] == tensor["name"]), None)
        if max_batch > 0 and (not shape or shape[0] != -1):
            raise ManifestError(f"{label}: config.pbtxt has max_batch_size {max_batch} but ONNX {side} "
                                f"{tensor['name']!r:.60} has no dynamic first (batch) axis (shape {shape}); "
                                f"set max_batch_size: 0 and give the full dims")
        if entry is not None:
            if entry["datatype"] and entry["datatype"] != tensor["datatype"]:
                raise ManifestError(f"{label}: config.pbtxt {side} {tensor['name']!r:.60} has data_type "
                                    f"TYPE_{entry['datatype']} but the ONNX graph has {tensor['datatype']}; "
                                    f"make config.pbtxt say TYPE_{tensor['datatype']}")
            if entry["has_dims"] and tensor["has_shape"]:
                wanted = entry["shape"]
                if len(wanted) != len(shape) or any(-1 not in (a, b) and a != b for a, b in zip(wanted, shape)):
                    raise ManifestError(f"{label}: config.pbtxt {side} {tensor['name']!r:.60} has shape {wanted} "
                                        f"(batch axis included) but the ONNX graph has {shape}; fix dims in config.pbtxt")
                shape = [b if a == -1 else a for a, b in zip(wanted, shape)]
            elif entry["has_dims"]:
                shape = list(entry["shape"])
        out.append({"name": tensor["name"], "datatype": tensor["datatype"], "shape": shape})
    return out


def task_of(outputs: list[dict[str, Any]]) -> str:
    """See the module docstring: embedding by name or per-token rank, else classification."""
    first = outputs[0]
    if first["name"].lower() in EMBEDDING_NAMES or len(first["shape"]) >= 3:
        return "embedding"
    return "classification"


def _example(inputs: list[dict[str, Any]], batch: int) -> dict[str, np.ndarray] | None:
    """Seeded random inputs of the model's shapes (timing only, never quality); None if not batchable."""
    rng = np.random.default_rng(0)
    feeds = {}
    for tensor in inputs:
        shape = tensor["shape"]
        if batch > 1 and (not shape or shape[0] != -1):
            return None
        dims = [batch if i == 0 and d == -1 else RANDOM_AXIS if d == -1 else d for i, d in enumerate(shape)]
        if tensor["datatype"] in ("FP32", "FP16", "FP64"):
            dtype = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}[tensor["datatype"]]
            feeds[tensor["name"]] = rng.standard_normal(dims).astype(dtype)
        elif tensor["datatype"] == "BYTES":
            feeds[tensor["name"]] = np.full(dims, "timing", dtype=object)
        else:  # token ids, masks, flags: ones are valid ids and a full attention mask
            feeds[tensor["name"]] = np.ones(dims, dtype=np.bool_ if tensor["datatype"] == "BOOL"
                                            else np.dtype(tensor["datatype"].lower()))
    return feeds


def _time(session: Any, feeds: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """p50/p95 ms of runs filling LATENCY_BUDGET_S after one warm-up (at least 3 runs, at most 200)."""
    if feeds is None:
        return {"p50_ms": None, "p95_ms": None, "runs": 0}
    session.run(None, feeds)
    began = time.perf_counter()
    session.run(None, feeds)
    once = time.perf_counter() - began
    times = [once * 1e3]
    for _ in range(max(2, min(199, int(LATENCY_BUDGET_S / max(once, 1e-6))))):
        began = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - began) * 1e3)
    p50, p95 = np.percentile(times, [50, 95])
    shape = {name: list(a.shape) for name, a in feeds.items()}
    return {"p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4), "runs": len(times), "shape": shape}


def _latency(path: Path, inputs: list[dict[str, Any]], cpu: str) -> dict[str, Any]:
    """Batch 1 and 32 on random inputs with the server's session recipe; figures left null when the
    model cannot run on them (a run error is the server's to report when it loads the file)."""
    from modelrepo.session import open_session

    entry: dict[str, Any] = {"threads": 1, "cpu": cpu, "inputs": "seeded random (timing only)"}
    try:
        session = open_session(path, 1)
        entry["batch_1"] = _time(session, _example(inputs, 1))
        entry["batch_32"] = _time(session, _example(inputs, 32))
    except Exception as exc:  # ONNX Runtime refuses or fails the graph: the load will say so with its reason
        empty = {"p50_ms": None, "p95_ms": None, "runs": 0}
        entry.update(batch_1=empty, batch_32=empty, error=str(exc).splitlines()[0][:200] if str(exc) else "")
    return entry


def _variant(folder: Path, name: str, path: Path, inputs: list[dict[str, Any]], cpu: str) -> dict[str, Any]:
    started = time.perf_counter()
    stat = path.stat()
    example = _example(inputs, 1)
    try:
        macs = onnx_macs(path, example) if example else None
    except Exception:  # shape inference cannot follow every graph; MACs are optional in the manifest
        macs = None
    try:
        parameters = onnx_parameters(path)
    except Exception as exc:  # external data missing or torn: the file cannot be served either
        raise ManifestError(f"{folder.name}/{path.relative_to(folder).as_posix()}: cannot read its weights "
                            f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}); "
                            f"replace the file") from None
    return {"kind": "version", "parent": None,
            "recipe": {"name": "import", "params": {"format": "onnx", "layout": LAYOUT, "version": name}},
            "file": path.relative_to(folder).as_posix(), "sha256": sha256_file(path), "bytes": stat.st_size,
            "parameters": parameters, "macs": macs, "quality": {},
            "latency": _latency(path, inputs, cpu), "build_seconds": round(time.perf_counter() - started, 2),
            "file_mtime_ns": stat.st_mtime_ns}


def _reusable(previous: dict[str, Any] | None, name: str, folder: Path, path: Path) -> dict[str, Any] | None:
    """The previous manifest's entry for this version if its file is the same on disk (path, size, mtime)."""
    entry = ((previous or {}).get("variants") or {}).get(name)
    if not isinstance(entry, dict) or entry.get("file") != path.relative_to(folder).as_posix():
        return None
    stat = path.stat()
    if entry.get("bytes") != stat.st_size or entry.get("file_mtime_ns") != stat.st_mtime_ns:
        return None
    return entry


def derive_manifest(folder: Path, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest (schema version 1) of the Triton-layout model in `folder`. Entries of `previous` (the
    manifest written last time) are reused for unchanged files, so a re-derive does not hash or time them
    again; its other variants (made by on-the-fly jobs) and a routing set by hand are kept.
    ManifestError names the file and field to fix."""
    name = folder.name
    config = read_config(folder, name)
    files = variant_files(folder, config)
    order = sorted(files, key=int)
    inputs = outputs = None
    for version in order:
        label = f"{name}/{files[version].relative_to(folder).as_posix()}"
        graph_in, graph_out = _graph_tensors(files[version], label)
        max_batch = config["max_batch_size"] if config else 0
        ins = _merge(graph_in, config["input"] if config else None, "input", label, max_batch)
        outs = _merge(graph_out, config["output"] if config else None, "output", label, max_batch)
        if inputs is not None and (ins, outs) != (inputs, outputs):
            raise ManifestError(f"{label}: inputs/outputs {ins} -> {outs} differ from version {order[0]}'s "
                                f"{inputs} -> {outputs}; versions of one model must share them")
        inputs, outputs = ins, outs
    assert inputs is not None and outputs is not None
    # The first writer's host and tools stay: replicas on other CPUs sharing the repository must not
    # rewrite the manifest back and forth (each variant's latency names the CPU it was timed on).
    host = (previous or {}).get("host") or host_record()
    cpu = str(host_record()["cpu"])  # this machine's, for the variants timed now
    variants = {}
    for version in order:
        variants[version] = (_reusable(previous, version, folder, files[version])
                             or _variant(folder, version, files[version], inputs, cpu))
    # Variants of the previous manifest that are not versions (on-the-fly jobs' int8, ...) stay while their file does.
    for vname, entry in ((previous or {}).get("variants") or {}).items():
        if vname not in variants and not vname.isdigit() and isinstance(entry, dict) \
                and (folder / str(entry.get("file", ""))).is_file() and entry.get("parent") in variants:
            variants[vname] = entry
    default = order[-1]
    routing = {"policy": "fixed", "variant": default}
    if previous and previous.get("routing") != {"policy": "fixed", "variant": previous.get("default_variant")}:
        kept = previous.get("routing")
        if isinstance(kept, dict) and kept.get("variant", default) in variants \
                and all(v in variants for v in (kept.get("weights") or {})):
            routing = kept  # set by hand or by SetRouting; still valid
    task = task_of(outputs)
    return {
        "schema_version": SCHEMA_VERSION, "name": name, "task": task,
        "created": (previous or {}).get("created") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "layout": LAYOUT, "config": CONFIG if config else None,
        "max_batch_size": config["max_batch_size"] if config else None,
        "inputs": inputs, "outputs": outputs, "primary_metric": PRIMARY_METRIC[task],
        "default_variant": default, "routing": routing,
        "data": {"name": None, "source": "none", "seed": None, "splits": {}, "heldout_file": None,
                 "calibration_file": None},
        "host": host, "tools": (previous or {}).get("tools") or tool_versions(), "variants": variants,
    }
