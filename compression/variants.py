"""The variant registry: each variant name maps to a kind, a parent and a maker that writes its ONNX file."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.data import Splits
from compression.distill import DistillOptions, distill
from compression.errors import UsageError
from compression.export import export_onnx
from compression.progress import Progress
from compression.prune import PruneOptions, count_macs_params, prune
from compression.quantize import QuantizeOptions, quantize_int8
from compression.teachers import Teacher
from compression.train import TrainOptions, accuracy, fit, logits_of, seed_everything

__all__ = ["VARIANTS", "BuildContext", "Made", "VariantOptions", "VariantSpec", "plan"]


@dataclass(frozen=True)
class VariantOptions:
    """Every per-variant knob of one build (the command line fills these)."""

    student_hidden: tuple[int, ...] = (300, 300)
    distill: DistillOptions = DistillOptions(train=TrainOptions(epochs=150))
    prune: PruneOptions = PruneOptions()
    prune_finetune_lr: float = 5e-4
    """Recovery after pruning is KD from the parent with `distill`'s T, alpha and batch size,
    for `prune.finetune_epochs`, at this gentler learning rate (the weights are already good)."""
    quantize: QuantizeOptions = QuantizeOptions()


@dataclass
class BuildContext:
    """What makers share: the teacher, the data, the options and everything made so far."""

    teacher: Teacher
    splits: Splits
    calibration: np.ndarray
    options: VariantOptions
    progress: Progress
    made: dict[str, Made] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class Made:
    """A maker's result, besides the ONNX file it wrote."""

    recipe: dict[str, Any]
    macs: int
    """Multiply-accumulates per sample; quantized variants inherit their parent's."""
    module: nn.Module | None = None
    """The torch model, for torch-level children (e.g. a later pruned+distilled chain)."""
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Unserved comparison rows for the manifest's `baselines`."""


Maker = Callable[[BuildContext, "VariantSpec", Path], Made]


@dataclass(frozen=True)
class VariantSpec:
    name: str
    kind: str
    parent: str | None
    make: Maker


def _example(ctx: BuildContext) -> torch.Tensor:
    return torch.zeros(1, *ctx.teacher.inputs[0].shape[1:])


def _export(ctx: BuildContext, module: nn.Module, path: Path) -> None:
    export_onnx(module, path, ctx.teacher.inputs, ctx.teacher.outputs)


def make_teacher(ctx: BuildContext, spec: VariantSpec, path: Path) -> Made:
    """The teacher as it is (trained or loaded earlier), exported."""
    module = ctx.teacher.module
    _export(ctx, module, path)
    macs, _ = count_macs_params(module, _example(ctx))
    return Made(ctx.teacher.recipe, macs, module)


def make_distilled(ctx: BuildContext, spec: VariantSpec, path: Path) -> Made:
    """A small student distilled from the parent, plus the same student trained without it."""
    teacher = ctx.made[spec.parent].module
    options = ctx.options.distill
    hidden = ctx.options.student_hidden
    seed_everything(options.train.seed)
    student = ctx.teacher.make_student(hidden)
    with ctx.progress.step(f"{spec.name}: distill into hidden {list(hidden)}") as step:
        result = distill(student, teacher, ctx.splits, options, ctx.progress, spec.name)
        step.note(f"best epoch {result.best_epoch}, validation accuracy {result.val_accuracy:.4f}")
    _export(ctx, student, path)
    macs, params = count_macs_params(student, _example(ctx))

    # Hinton's control: identical architecture, seed and schedule, hard labels only. Measured
    # in torch (it is never exported or served), on the same test split as the variants.
    seed_everything(options.train.seed)
    alone = ctx.teacher.make_student(hidden)
    with ctx.progress.step("baseline: same student without the teacher") as step:
        trained = fit(alone, ctx.splits, options.train, ctx.progress, "baseline")
        test_logits = logits_of(alone, ctx.splits.x_test)
        teacher_top1 = logits_of(teacher, ctx.splits.x_test).argmax(dim=1)
        quality = {"accuracy": round(accuracy(test_logits, ctx.splits.y_test), 6),
                   "agreement": round(float((test_logits.argmax(dim=1) == teacher_top1)
                                            .float().mean()), 6)}
        step.note(f"test accuracy {quality['accuracy']:.4f}")
    baseline = {"parameters": count_macs_params(alone, _example(ctx))[1], "quality": quality,
                "recipe": {"name": "train", "params": {"hidden": list(hidden), "loss": "CE(s,y)",
                                                       **options.train.as_params()}},
                "build_seconds": round(trained.seconds, 2)}
    recipe = {"name": "distill", "params": {
        "teacher": spec.parent, "hidden": list(hidden), "parameters": params,
        **options.as_params(), "best_epoch": result.best_epoch}}
    return Made(recipe, macs, student, {"student_without_teacher": baseline})


def make_pruned(ctx: BuildContext, spec: VariantSpec, path: Path) -> Made:
    """Structural pruning of the parent's hidden neurons, then KD recovery guided by the parent."""
    parent = ctx.made[spec.parent].module
    options = ctx.options.prune
    guide = replace(ctx.options.distill, train=replace(
        ctx.options.distill.train, epochs=options.finetune_epochs, lr=ctx.options.prune_finetune_lr))
    seed_everything(guide.train.seed)
    model = copy.deepcopy(parent)
    output_layer = model.get_submodule(ctx.teacher.output_layer)

    def finetune(pruned: nn.Module, epochs: int, step_no: int) -> None:
        recovery = replace(guide, train=replace(guide.train, epochs=epochs))
        distill(pruned, parent, ctx.splits, recovery, ctx.progress, f"{spec.name} step {step_no}")

    with ctx.progress.step(f"{spec.name}: prune {options.ratio:.0%} of hidden neurons "
                           f"({options.importance}), fine-tune {options.finetune_epochs} epochs") as step:
        report = prune(model, _example(ctx), output_layer, options, finetune)
        step.note(f"widths {report.widths_before} -> {report.widths_after}, parameters "
                  f"{report.params_before} -> {report.params_after}")
    _export(ctx, model, path)
    recipe = {"name": "prune", "params": {
        "library": "torch_pruning", "pruner": "BasePruner (MetaPruner)",
        "importance": options.importance, "ratio": options.ratio, "steps": options.steps,
        "round_to": options.round_to, "ignored_layers": [ctx.teacher.output_layer], "scope": "per layer",
        "widths_before": report.widths_before, "widths_after": report.widths_after,
        "parameters_before": report.params_before, "parameters_after": report.params_after,
        "macs_before": report.macs_before, "macs_after": report.macs_after,
        "schedule": report.steps,
        "finetune": {"loss": "distill", "guide": spec.parent,
                     "temperature": guide.temperature, "alpha": guide.alpha,
                     **guide.train.as_params()}}}
    return Made(recipe, report.macs_after, model)


def make_int8(ctx: BuildContext, spec: VariantSpec, path: Path) -> Made:
    """Static int8 quantization of the parent's ONNX file, calibrated on training rows."""
    options = ctx.options.quantize
    with ctx.progress.step(f"{spec.name}: quantize {spec.parent} "
                           f"({options.calibration_method}, {len(ctx.calibration)} samples)"):
        quantize_int8(ctx.files[spec.parent], path, ctx.teacher.inputs[0].name,
                      ctx.calibration, options)
    recipe = {"name": "quantize_static", "params": {"source": spec.parent, **options.as_params(),
                                                    "calibration_samples": len(ctx.calibration)}}
    return Made(recipe, ctx.made[spec.parent].macs)


# name -> spec. Chains are one line each when they are wanted, e.g.
#   "distilled+int8": VariantSpec("distilled+int8", "distilled+int8", "distilled", make_int8)
VARIANTS: dict[str, VariantSpec] = {spec.name: spec for spec in (
    VariantSpec("teacher", "teacher", None, make_teacher),
    VariantSpec("distilled", "distilled", "teacher", make_distilled),
    VariantSpec("pruned", "pruned", "teacher", make_pruned),
    VariantSpec("int8", "int8", "teacher", make_int8),
)}


def plan(requested: Sequence[str]) -> list[str]:
    """Variants to build in order: the teacher first, every parent before its children."""
    for name in requested:
        if name not in VARIANTS:
            raise UsageError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        parent = VARIANTS[name].parent
        if parent is not None:
            visit(parent)
        order.append(name)

    for name in ["teacher", *requested]:
        visit(name)
    return order
