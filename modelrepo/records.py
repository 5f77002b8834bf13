"""Typed records of a manifest (tensors, variants, models), parsed leniently enough for hand-written files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrepo import ManifestError
from modelrepo.files import confined
from modelrepo.schema import SCHEMA_VERSION

__all__ = ["ModelSpec", "TensorSpec", "VariantSpec", "parse_model", "parse_tensors"]


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: KServe datatype and shape, -1 for a dynamic axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class VariantSpec:
    """One servable variant of a model as the manifest records it."""

    name: str
    kind: str
    parent: str | None
    path: Path
    sha256: str
    bytes: int
    parameters: int
    macs: int | None
    quality: dict[str, float]
    latency: dict[str, Any]
    batch_invariant: bool | None = None  # None: an older manifest; the server reads it from the graph


@dataclass(frozen=True)
class ModelSpec:
    """A model (the teacher and all its variants) as its manifest describes it."""

    name: str
    task: str
    folder: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    default_variant: str
    routing: dict[str, Any]
    primary_metric: str
    variants: dict[str, VariantSpec]
    labels: tuple[str, ...] = ()
    tokenizer: dict[str, Any] | None = None  # text models: {"file", "max_length", "text_input", "pad_id"}
    manifest: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _require(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise ManifestError(f"{where}: missing field '{key}'")
    return obj[key]


def parse_tensors(items: Any, where: str) -> tuple[TensorSpec, ...]:
    """`inputs` / `outputs` of a manifest as TensorSpecs."""
    if not isinstance(items, list) or not items:
        raise ManifestError(f"{where}: must be a non-empty list of {{name, datatype, shape}}")
    out = []
    for i, t in enumerate(items):
        at = f"{where}[{i}]"
        shape = _require(t, "shape", at)
        if not isinstance(shape, list) or not all(type(d) is int and d >= -1 for d in shape):
            raise ManifestError(f"{at}.shape: must be a list of integers, -1 for dynamic axes")
        out.append(TensorSpec(str(_require(t, "name", at)), str(_require(t, "datatype", at)), tuple(shape)))
    return tuple(out)


def _number(value: Any, where: str, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError(f"{where}: expected a number, got {value!r:.40}")
    return int(value)


def _variant(folder: Path, name: str, v: Any, where: str) -> VariantSpec:
    at = f"{where}: variants.{name}"
    if not isinstance(v, dict):
        raise ManifestError(f"{at}: expected an object, got {type(v).__name__}")
    quality = v.get("quality") or {}
    latency = v.get("latency") or {}
    if not isinstance(quality, dict) or not isinstance(latency, dict):
        raise ManifestError(f"{at}: quality and latency must be objects")
    parent = v.get("parent")
    return VariantSpec(
        name=name,
        kind=str(v.get("kind", name)),
        parent=None if parent is None else str(parent),
        path=confined(folder, str(_require(v, "file", at)), at),
        sha256=str(_require(v, "sha256", at)),
        bytes=_number(v.get("bytes"), f"{at}.bytes"),
        parameters=_number(v.get("parameters"), f"{at}.parameters"),
        macs=None if v.get("macs") is None else _number(v.get("macs"), f"{at}.macs"),
        quality={k: float(q) for k, q in quality.items() if isinstance(q, (int, float)) and not isinstance(q, bool)},
        latency=dict(latency),
        batch_invariant=v["batch_invariant"] if isinstance(v.get("batch_invariant"), bool) else None,
    )


def parse_model(folder: Path, manifest: Any, where: str) -> ModelSpec:
    """The ModelSpec of a manifest read from `folder`; ManifestError names the first bad field."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{where}: schema_version {version!r:.40} is not supported (expected {SCHEMA_VERSION})")
    variants_raw = _require(manifest, "variants", where)
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise ManifestError(f"{where}: 'variants' must name at least one variant")
    variants = {str(n): _variant(folder, str(n), v, where) for n, v in variants_raw.items()}
    default = manifest.get("default_variant") or ("teacher" if "teacher" in variants else next(iter(variants)))
    if default not in variants:
        raise ManifestError(f"{where}: default_variant {default!r:.40} is not among the variants {sorted(variants)}")
    routing = manifest.get("routing") or {"policy": "fixed", "variant": default}
    if not isinstance(routing, dict):
        raise ManifestError(f"{where}: routing must be an object such as {{\"policy\": \"fixed\"}}")
    labels = manifest.get("labels") or ()
    if not isinstance(labels, list | tuple):
        raise ManifestError(f"{where}: labels must be a list of class names")
    tokenizer = manifest.get("tokenizer")
    return ModelSpec(
        name=str(manifest.get("name", folder.name)),
        task=str(manifest.get("task", "classification")),
        folder=folder,
        inputs=parse_tensors(_require(manifest, "inputs", where), f"{where}: inputs"),
        outputs=parse_tensors(_require(manifest, "outputs", where), f"{where}: outputs"),
        default_variant=default,
        routing=dict(routing),
        primary_metric=str(manifest.get("primary_metric", "accuracy")),
        variants=variants,
        labels=tuple(str(label) for label in labels),
        tokenizer=dict(tokenizer) if isinstance(tokenizer, dict) else None,
        manifest=manifest,
    )
