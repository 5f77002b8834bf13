"""Reads the model repository: manifests into typed specs, paths confined to the root, sha256 checked."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from modelrepo import ManifestError
from modelrepo.files import MANIFEST, confined, read_manifest, sha256_file, write_manifest
from modelrepo.records import ModelSpec, TensorSpec, VariantSpec, parse_model
from modelrepo.triton_layout import LAYOUT, derive_manifest, is_layout_model
from server.errors import NotFound, RepositoryError
from server.manifest_io import update_manifest

log = logging.getLogger(__name__)

__all__ = ["TensorSpec", "VariantSpec", "ModelSpec", "Repository", "is_model_name"]


class Repository:
    """A folder of models; every path it hands out is checked to stay inside that folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        # Triton-layout models: model -> (disk_key, spec), so an unchanged folder is not derived again
        # (a read-only repository has no manifest to remember it by).
        self._derived: dict[str, tuple[tuple, ModelSpec]] = {}
        self._derive_lock = threading.Lock()

    def model_names(self) -> list[str]:
        """Models are the sub-folders that hold a manifest or Triton-layout ONNX files (`model.onnx`, bare or in
        numeric version folders); staging folders (dot-names) are skipped."""
        if not self.root.is_dir():
            raise RepositoryError(
                f"model repository {self.root} does not exist; build one with `python -m compression.build`"
            )
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and _has_manifest(p))

    def has_model(self, name: str) -> bool:
        """Is `name` a model folder (a manifest or Triton-layout ONNX files)? Never raises for odd names."""
        return is_model_name(name) and _has_manifest(self.root / name)

    def disk_key(self, name: str) -> tuple:
        """What the model folder looks like on disk (names, sizes, mtimes of its files two levels deep);
        equal keys mean nothing was written, so the poll need not parse or hash anything."""
        folder = self.root / name
        entries: list[tuple] = []
        try:
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue  # staging folders of jobs in progress
                if entry.is_dir(follow_symlinks=False):
                    for inner in sorted(os.scandir(entry.path), key=lambda e: e.name):
                        st = inner.stat()
                        entries.append((entry.name, inner.name, st.st_size, st.st_mtime_ns, st.st_ino))
                else:
                    st = entry.stat()
                    entries.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError as exc:
            entries.append(("error", str(exc)))
        return tuple(entries)

    @staticmethod
    def confined(base: Path, relative: str, what: str) -> Path:
        """Resolve `relative` under `base`, refusing `..`, absolute paths and symlinks that escape."""
        try:
            return confined(base, relative, what)
        except ManifestError as exc:
            raise RepositoryError(str(exc)) from None

    def load_spec(self, name: str) -> ModelSpec:
        """Parse and validate `<root>/<name>/manifest.json`; a Triton-layout folder (no manifest, or one it
        derived before) is derived from its ONNX files and config.pbtxt (`modelrepo.triton_layout`)."""
        if not is_model_name(name):
            raise RepositoryError(f"invalid model name {name!r:.100}")
        folder = self.confined(self.root, name, f"model {name!r}")
        try:
            if not (folder / MANIFEST).is_file():
                if not folder.is_dir():
                    raise NotFound(f"no model {name!r} in the repository {self.root}")
                if not is_layout_model(folder):
                    raise RepositoryError(f"model {name!r}: no {MANIFEST} in {folder}")
                return self._layout_spec(name, folder, None)
            manifest = read_manifest(folder)
            if manifest.get("layout") == LAYOUT:
                return self._layout_spec(name, folder, manifest)
            return parse_model(folder, manifest, str(folder / MANIFEST))
        except ManifestError as exc:
            raise RepositoryError(f"model {name!r}: {exc}") from None

    def _layout_spec(self, name: str, folder: Path, previous: dict[str, Any] | None) -> ModelSpec:
        """Derive the manifest of a Triton-layout folder, write it beside the files when the folder is
        writable (atomically, under the manifest lock), else keep it in memory; the folder is the truth,
        so a new version, a changed file or config.pbtxt is followed on the next load or poll."""
        key = self.disk_key(name)
        with self._derive_lock:  # one derive per folder at a time: loads and the poll may ask together
            cached = self._derived.get(name)
            if cached is not None and cached[0] == key:
                return cached[1]
            manifest = derive_manifest(folder, previous)
            if manifest != previous:
                manifest = self._write_layout_manifest(folder, manifest, previous)
            spec = parse_model(folder, manifest, f"{name}/{MANIFEST} (derived from the Triton layout)")
            self._derived[name] = (self.disk_key(name), spec)
            return spec

    @staticmethod
    def _write_layout_manifest(folder: Path, manifest: dict[str, Any], previous: dict[str, Any] | None) -> dict:
        """Write the derived manifest; a read-only repository keeps it in memory. Under the manifest lock a
        manifest changed since it was read (a job's new variant) is derived again on top of that change."""
        try:
            if previous is None and not (folder / MANIFEST).exists():
                write_manifest(folder, manifest)
                log.info("model %s: served from its Triton layout; wrote %s", folder.name, folder / MANIFEST)
                return manifest
            written: dict[str, Any] = {}

            def change(on_disk: dict[str, Any]) -> None:
                new = manifest if on_disk == previous else derive_manifest(folder, on_disk)
                on_disk.clear()
                on_disk.update(new)
                written.update(new)

            update_manifest(folder, change)
            return written
        except OSError as exc:  # a read-only repository (or volume): serve it as it is
            log.info("model %s: served from its Triton layout; manifest kept in memory (%s: %s)", folder.name,
                     type(exc).__name__, exc.strerror or exc)
            return manifest

    @staticmethod
    def verify(variant: VariantSpec, model: str) -> None:
        """Refuse a model file whose bytes do not match the manifest's sha256."""
        if not variant.path.is_file():
            raise RepositoryError(f"model {model!r} variant {variant.name!r}: file {variant.path} is missing")
        actual = sha256_file(variant.path)
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


def is_model_name(name: str) -> bool:
    """Can `name` be a model folder: printable, no path separator, no leading dot (staging), <= 255 chars?"""
    return 0 < len(name) <= 255 and not name.startswith(".") and not any(c in name for c in "/\\") and name.isprintable()


def _has_manifest(folder: Path) -> bool:
    """A model folder (a manifest, or Triton-layout ONNX files)? An entry we may not read (a volume's
    root-only `lost+found`) is not one."""
    try:
        return (folder / MANIFEST).is_file() or is_layout_model(folder)
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return False


def _all_tensors(graph: Any) -> Any:
    """Initializers of a graph and of its subgraphs (If/Loop bodies), which may also hold external data."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.ByteSize():
                yield from _all_tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _all_tensors(sub)
