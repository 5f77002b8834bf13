"""Teachers: where the model to compress comes from (built-in and trained here, or loaded later)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from compression.data import Splits
from compression.errors import UsageError
from compression.manifest import TensorSpec
from compression.mlp import MLP
from compression.progress import Progress
from compression.train import TrainOptions, fit, seed_everything

__all__ = ["BUILTIN_TEACHERS", "FILE_TEACHERS", "Teacher", "TeacherOptions", "TeacherSource",
           "resolve_teacher"]


@dataclass(frozen=True)
class TeacherOptions:
    """How a built-in teacher is trained (loaded teachers ignore this)."""

    hidden: tuple[int, ...] = (1200, 1200)
    dropout: float = 0.5
    input_dropout: float = 0.1
    train: TrainOptions = TrainOptions(epochs=60, lr=1e-3, weight_decay=1e-4)


@dataclass
class Teacher:
    """A ready teacher: the torch module plus what the variants and the manifest need of it."""

    name: str
    module: nn.Module
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: list[str] | None
    recipe: dict[str, Any]
    make_student: Callable[[Sequence[int]], nn.Module]
    """A smaller model of the same family, given its hidden widths (for distillation)."""
    output_layer: str
    """Submodule name of the layer pruning must keep whole (its outputs are the classes)."""


@dataclass(frozen=True)
class TeacherSource:
    """How to obtain a teacher, and the data set it comes with."""

    name: str
    default_data: str
    load: Callable[[Splits, TeacherOptions, Progress], Teacher]


def _digits(splits: Splits, options: TeacherOptions, progress: Progress) -> Teacher:
    """Hinton et al.'s MNIST teacher shape scaled to 8x8 digits: 64 → 1200 → 1200 → 10, dropout."""
    seed_everything(options.train.seed)
    module = MLP(64, options.hidden, 10, options.dropout, options.input_dropout)
    with progress.step("teacher: train 64-" + "-".join(map(str, options.hidden)) + "-10") as step:
        result = fit(module, splits, options.train, progress, "teacher")
        step.note(f"{result.epochs_run} epochs, best epoch {result.best_epoch}, "
                  f"validation accuracy {result.val_accuracy:.4f}")
    recipe = {"name": "train", "params": {
        "architecture": "mlp", "hidden": list(options.hidden), "dropout": options.dropout,
        "input_dropout": options.input_dropout, **options.train.as_params(),
        "selection": "best validation accuracy", "best_epoch": result.best_epoch,
        "validation_accuracy": round(result.val_accuracy, 6)}}
    return Teacher(
        name="digits", module=module, task="classification",
        inputs=(TensorSpec("input", "FP32", (-1, 64)),),
        outputs=(TensorSpec("logits", "FP32", (-1, 10)),),
        labels=splits.labels, recipe=recipe,
        make_student=lambda hidden: MLP(64, hidden, 10),
        output_layer="head")


BUILTIN_TEACHERS: dict[str, TeacherSource] = {"digits": TeacherSource("digits", "digits", _digits)}

# Teachers from files, by suffix. Each entry will get a loader (torch.jit.load, torch.export.load,
# ONNX for quantization only); `package.module:factory` with --weights goes beside them.
FILE_TEACHERS: dict[str, str] = {".pt": "TorchScript", ".pt2": "torch.export", ".onnx": "ONNX"}


def resolve_teacher(spec: str) -> TeacherSource:
    """The teacher named by `--teacher`: a built-in name (files and factories are not yet supported)."""
    if spec in BUILTIN_TEACHERS:
        return BUILTIN_TEACHERS[spec]
    builtin = ", ".join(sorted(BUILTIN_TEACHERS))
    suffix = Path(spec).suffix
    if suffix in FILE_TEACHERS:
        if not Path(spec).is_file():
            raise UsageError(f"teacher file not found: {spec}")
        raise UsageError(f"{FILE_TEACHERS[suffix]} teacher files are not supported yet; "
                         f"built-in teachers: {builtin}")
    if ":" in spec:
        raise UsageError(f"factory teachers ({spec}) are not supported yet; built-in teachers: {builtin}")
    raise UsageError(f"unknown teacher {spec!r}; built-in teachers: {builtin}")
