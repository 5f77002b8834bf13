"""Reads the model repository: manifests into typed specs, paths confined to the root, sha256 checked."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import NotFound, RepositoryError

__all__ = ["TensorSpec", "VariantSpec", "ModelSpec", "Repository", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: KServe datatype and shape, -1 for a dynamic axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]


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
    tokenizer: dict[str, Any] | None = None  # text models: {"file", "max_length", "text_input"}
    manifest: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _require(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise RepositoryError(f"{where}: missing field '{key}'")
    return obj[key]


def _tensors(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or not items:
        raise RepositoryError(f"{where}: must be a non-empty list of {{name, datatype, shape}}")
    out = []
    for i, t in enumerate(items):
        at = f"{where}[{i}]"
        shape = _require(t, "shape", at)
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= -1 for d in shape):
            raise RepositoryError(f"{at}.shape: must be a list of integers, -1 for dynamic axes")
        out.append(TensorSpec(str(_require(t, "name", at)), str(_require(t, "datatype", at)), tuple(shape)))
    return tuple(out)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large models do not fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Repository:
    """A folder of models; every path it hands out is checked to stay inside that folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def model_names(self) -> list[str]:
        """Models are the sub-folders that hold a manifest; staging folders (dot-names) are skipped."""
        if not self.root.is_dir():
            raise RepositoryError(
                f"model repository {self.root} does not exist; build one with `python -m compression.build`"
            )
        return sorted(
            p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    def confined(self, base: Path, relative: str, what: str) -> Path:
        """Resolve `relative` under `base`, refusing `..`, absolute paths and symlinks that escape."""
        candidate = (base / relative).resolve()
        if not candidate.is_relative_to(base.resolve()):
            raise RepositoryError(f"{what}: path {relative!r} leaves the model folder; refusing to load it")
        return candidate

    def load_spec(self, name: str) -> ModelSpec:
        """Parse and validate `<root>/<name>/manifest.json`."""
        if not name or "/" in name or name.startswith("."):
            raise RepositoryError(f"invalid model name {name!r}")
        folder = self.confined(self.root, name, f"model {name!r}")
        path = folder / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            if not folder.is_dir():
                raise NotFound(f"no model {name!r} in the repository {self.root}") from None
            raise RepositoryError(f"model {name!r}: no {MANIFEST} in {folder}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RepositoryError(f"model {name!r}: cannot read {path}: {exc}") from None
        where = f"{path}"
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RepositoryError(f"{where}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
        variants_raw = _require(manifest, "variants", where)
        if not isinstance(variants_raw, dict) or not variants_raw:
            raise RepositoryError(f"{where}: 'variants' must name at least one variant")
        variants: dict[str, VariantSpec] = {}
        for vname, v in variants_raw.items():
            at = f"{where}: variants.{vname}"
            variants[vname] = VariantSpec(
                name=vname,
                kind=str(v.get("kind", vname)),
                parent=v.get("parent"),
                path=self.confined(folder, str(_require(v, "file", at)), at),
                sha256=str(_require(v, "sha256", at)),
                bytes=int(v.get("bytes", 0)),
                parameters=int(v.get("parameters", 0)),
                macs=v.get("macs"),
                quality={k: float(q) for k, q in (v.get("quality") or {}).items() if isinstance(q, (int, float))},
                latency=dict(v.get("latency") or {}),
            )
        default = manifest.get("default_variant") or ("teacher" if "teacher" in variants else next(iter(variants)))
        if default not in variants:
            raise RepositoryError(f"{where}: default_variant {default!r} is not among the variants {sorted(variants)}")
        return ModelSpec(
            name=str(manifest.get("name", name)),
            task=str(manifest.get("task", "classification")),
            folder=folder,
            inputs=_tensors(_require(manifest, "inputs", where), f"{where}: inputs"),
            outputs=_tensors(_require(manifest, "outputs", where), f"{where}: outputs"),
            default_variant=default,
            routing=dict(manifest.get("routing") or {"policy": "fixed", "variant": default}),
            primary_metric=str(manifest.get("primary_metric", "accuracy")),
            variants=variants,
            labels=tuple(manifest.get("labels") or ()),
            tokenizer=dict(manifest["tokenizer"]) if isinstance(manifest.get("tokenizer"), dict) else None,
            manifest=manifest,
        )

    @staticmethod
    def verify(variant: VariantSpec, model: str) -> None:
        """Refuse a model file whose bytes do not match the manifest's sha256."""
        if not variant.path.is_file():
            raise RepositoryError(f"model {model!r} variant {variant.name!r}: file {variant.path} is missing")
        actual = sha256_of(variant.path)
        if actual != variant.sha256:
            raise RepositoryError(
                f"model {model!r} variant {variant.name!r}: sha256 of {variant.path.name} is {actual[:12]}…, "
                f"the manifest says {variant.sha256[:12]}…; the file changed after the build — rebuild it"
            )

    def check_external_data(self, variant: VariantSpec) -> None:
        """ONNX external-data files must live inside the variant's own folder (no `..`, no symlink escapes).

        Reads only the graph structure (`load_external_data=False`), so nothing outside is ever opened.
        """
        import onnx

        folder = variant.path.parent.resolve()
        try:
            model = onnx.load(str(variant.path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
            raise RepositoryError(f"{variant.path}: not a readable ONNX file: {str(exc).splitlines()[0]}") from None
        for tensor in _all_tensors(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (folder / location).resolve()
            if not location or not target.is_relative_to(folder):
                raise RepositoryError(
                    f"{variant.path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the "
                    f"variant's folder; refusing to load it"
                )


def _all_tensors(graph: Any) -> Any:
    """Initializers of a graph and of its subgraphs (If/Loop bodies), which may also hold external data."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.ByteSize():
                yield from _all_tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _all_tensors(sub)
