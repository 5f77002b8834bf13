"""Export a torch module to a single self-contained ONNX file with a dynamic batch axis."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from modelrepo.records import TensorSpec

__all__ = ["BATCH_AXIS", "OPSET", "export_onnx"]

# Opset 20 is what the torch.export-based exporter emits natively; ORT 1.31 runs it and its
# quantizer supports per-channel QDQ from opset 13 on.
OPSET = 20
BATCH_AXIS = "batch"


def _name_batch_axis(model: onnx.ModelProto) -> None:
    """The exporter names dynamic axes after internal symbols (`s31`); call the batch `batch`."""
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.HasField("dim_param"):
            dim.dim_param = BATCH_AXIS


def export_onnx(module: nn.Module, path: Path, inputs: Sequence[TensorSpec],
                outputs: Sequence[TensorSpec], example: tuple[torch.Tensor, ...] | None = None) -> Path:
    """Write `module` (in eval mode) to `path` with the given I/O names and dynamic axes: dimension
    0 always, and every other dimension the input spec records as -1.

    `example` holds real rows of every input (two are used); without it zeros of the specs' shapes
    are traced.
    Weights are stored inside the file (no `.data` side file) so one sha256 covers the variant.
    """
    module = module.eval()
    # Batch of 2: a batch of 1 would let the tracer specialise the axis to the constant 1.
    if example is not None:
        examples = tuple(t[:2] if len(t) >= 2 else t.repeat(2, *[1] * (t.dim() - 1)) for t in example)
    else:
        examples = tuple(torch.zeros(2, *(d for d in spec.shape[1:])) for spec in inputs)
    dynamic = tuple({axis: torch.export.Dim.DYNAMIC for axis, d in enumerate(spec.shape)
                     if axis == 0 or d == -1} for spec in inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter is chatty (deprecation notes from its dependencies, missing torchvision ops);
    # none of that concerns a user of the build.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, examples, dynamo=True, external_data=False, verbose=False,
                input_names=[s.name for s in inputs], output_names=[s.name for s in outputs],
                dynamic_shapes=dynamic, opset_version=OPSET)
    finally:
        quiet.setLevel(level)
    model = program.model_proto
    _name_batch_axis(model)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path
