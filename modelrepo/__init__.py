"""The model repository format, written once as code: what `compression` writes and `server` reads.

Torch-free and grpc-free, so both halves import it. Modules, one job each:

    schema      manifest schema version 1 and `validate()` (docs/manifest.md)
    records     typed records of a manifest: TensorSpec, VariantSpec, ModelSpec
    files       sha256, atomic JSON writes, staged model folders, path confinement
    session     the ONNX Runtime session recipe every session uses (server and measurements)
    measure     running a model over named arrays, and quality per task
    latency     latency cases and interleaved timing, batches run in slices of rows
    onnxinfo    parameters, MACs and int8 weights counted on an ONNX file
    int8        the path-in/path-out int8 step with its accuracy-aware search
    entry       one variant's manifest entry, measured
"""

__all__ = ["ManifestError"]


class ManifestError(ValueError):
    """A manifest or model folder that breaks the repository format; the message names the field."""
