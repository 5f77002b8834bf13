"""The variant registry: each variant name maps to a kind, a parent and a maker that writes its ONNX file."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compression import distributed
from compression.data import Splits
from compression.distill import DistillOptions, distill, feature_loss, kd_loss
from compression.errors import UsageError
from compression.export import export_onnx
from compression.factory import load_callable, make_module
from compression.progress import Progress
from compression.prune import PruneOptions, count_macs_params, narrow, output_layers, prune
from compression.share import ShareOptions, share_weights
from compression.teachers import Teacher
from compression.train import TrainOptions, accuracy, fit, outputs_of, seed_everything, tensors
from modelrepo.host import cpu_flags
from modelrepo.int8 import QuantizeOptions, budget_for, resolved_reduce_range, search
from modelrepo.measure import run
from modelrepo.onnxinfo import int8_weights, onnx_macs
from modelrepo.session import open_session

__all__ = ["VARIANTS", "BuildContext", "Made", "VariantOptions", "VariantMaker", "plan"]


@dataclass(frozen=True)
class VariantOptions:
    """Every per-variant knob of one build (the command line fills these)."""

    student_width: float = 0.25
    """Hidden widths of a derived student, as a fraction of the teacher's."""
    student_hidden: tuple[int, ...] | None = None
    """Explicit hidden widths (teachers with a student family, e.g. the built-in MLP)."""
    student: str | None = None
    """`package.module:factory` returning the student module (overrides the derived one)."""
    distill: DistillOptions = DistillOptions(train=TrainOptions(epochs=150))
    prune: PruneOptions = PruneOptions()
    prune_finetune_lr: float = 5e-4
    """Recovery after pruning is distillation from the parent with `distill`'s loss and batch
    size, for `prune.finetune_epochs`, at this gentler learning rate (the weights are already good)."""
    quantize: QuantizeOptions = QuantizeOptions()
    share: ShareOptions = ShareOptions()


@dataclass
class BuildContext:
    """What makers share: the teacher, the data, the options and everything made so far."""

    teacher: Teacher
    splits: Splits
    calibration: dict[str, np.ndarray]
    options: VariantOptions
    progress: Progress
    host: dict[str, Any] = field(default_factory=dict)
    made: dict[str, Made] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        """Rank 0 (or the only process): the one that writes files."""
        return distributed.is_main()

    @property
    def example(self) -> tuple[torch.Tensor, ...]:
        """Two training rows of every input, as the module's positional arguments."""
        return tensors(self.splits.x_train, slice(0, 2))

    def distill_loss(self) -> str:
        loss = self.options.distill.loss
        if loss == "auto":
            return "kd" if self.teacher.task == "classification" else "cosine"
        if loss == "kd" and self.teacher.task != "classification":
            raise UsageError("--distill-loss kd needs a classifier teacher; use mse or cosine")
        return loss


@dataclass
class Made:
    """A maker's result, besides the ONNX file it wrote."""

    recipe: dict[str, Any]
    macs: int
    """Multiply-accumulates per sample; quantized and shared variants inherit their parent's."""
    module: nn.Module | None = None
    """The torch model, for torch-level children (e.g. a later pruned+distilled chain)."""
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Unserved comparison rows for the manifest's `baselines`."""


Maker = Callable[[BuildContext, "VariantMaker", Path], Made]


@dataclass(frozen=True)
class VariantMaker:
    name: str
    kind: str
    parent: str | None
    make: Maker
    trains: bool = False
    """Needs a torch teacher and gradient steps (runs on every torchrun process)."""


def _export(ctx: BuildContext, module: nn.Module, path: Path) -> None:
    if ctx.main:
        export_onnx(module, path, ctx.teacher.inputs, ctx.teacher.outputs, ctx.example)


def make_teacher(ctx: BuildContext, spec: VariantMaker, path: Path) -> Made:
    """The teacher as it is (trained or loaded earlier), exported; an ONNX teacher is copied."""
    module = ctx.teacher.module
    if module is None:
        if ctx.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            onnx.save_model(onnx.load(str(ctx.teacher.onnx_file)), str(path))  # external data inlined
        macs = onnx_macs(path, {k: v[:1] for k, v in ctx.splits.x_train.items()}) if ctx.main else 0
        return Made(ctx.teacher.recipe, macs)
    _export(ctx, module, path)
    macs, _ = count_macs_params(module, ctx.example)
    return Made(ctx.teacher.recipe, macs, module)


def _student(ctx: BuildContext, teacher: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The user's student, the teacher family's, or the teacher narrowed to `student_width`."""
    options = ctx.options
    seed_everything(options.distill.train.seed)
    if options.student:
        student = make_module(load_callable(options.student, "student factory"), options.student,
                              "student factory")
        about: dict[str, Any] = {"source": "factory", "factory": options.student}
    elif ctx.teacher.make_student is not None:
        student = ctx.teacher.make_student(options.student_width, options.student_hidden)
        about = {"source": "teacher family", "width": options.student_width,
                 **({"hidden": list(options.student_hidden)} if options.student_hidden else {})}
    elif options.student_hidden:
        raise UsageError("--student-hidden needs a teacher with a student family (the built-in "
                         "MLP); use --student-width or --student")
    else:
        keep = output_layers(teacher, ctx.example, ctx.teacher.output_layer)
        student = narrow(teacher, ctx.example, keep, options.student_width, options.distill.train.seed)
        about = {"source": "teacher narrowed (same graph, hidden widths scaled, re-initialised)",
                 "width": options.student_width}
    with torch.no_grad():
        two = {k: v[:2] for k, v in ctx.splits.x_train.items()}
        want = outputs_of(teacher, two).shape
        try:
            got = outputs_of(student, two).shape
        except Exception as error:
            raise UsageError(f"the student cannot run on the data: {error}") from error
    if got != want:
        raise UsageError(f"the student outputs {list(got)} per two rows, the teacher {list(want)}")
    widths = [m.out_features if isinstance(m, nn.Linear) else m.out_channels
              for m in student.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    return student, {**about, "layer_widths": widths}


def make_distilled(ctx: BuildContext, spec: VariantMaker, path: Path) -> Made:
    """A small student distilled from the parent, plus (labelled classifiers) the same student
    trained on labels alone: Hinton's control."""
    teacher = ctx.made[spec.parent].module
    options = replace(ctx.options.distill, loss=ctx.distill_loss())
    student, about = _student(ctx, teacher)
    initial = copy.deepcopy(student.state_dict())
    task = ctx.teacher.task
    with ctx.progress.step(f"{spec.name}: distill ({options.loss}) into layers "
                           f"{about['layer_widths']}") as step:
        result = distill(student, teacher, ctx.splits, options, ctx.progress, spec.name, task)
        step.note(f"{result.epochs_run} epochs, best epoch {result.best_epoch}, validation "
                  f"score {result.val_score:.4f}")
    _export(ctx, student, path)
    macs, params = count_macs_params(student, ctx.example)
    recipe = {"name": "distill", "params": {
        "teacher": spec.parent, "student": about, "parameters": params, **options.as_params(),
        "early_stopping": {"patience": options.train.patience,
                           "metric": "validation accuracy" if task == "classification" and ctx.splits.labelled
                           else ("validation agreement with the teacher" if task == "classification"
                                 else "validation cosine to the teacher")},
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch}}
    baselines = {}
    if task == "classification" and ctx.splits.labelled and options.loss == "kd":
        baselines["student_without_teacher"] = {
            **_baseline(ctx, teacher, student, initial, options), "architecture_of": spec.name}
    return Made(recipe, macs, student, baselines)


def _baseline(ctx: BuildContext, teacher: nn.Module, trained: nn.Module,
              initial: dict[str, torch.Tensor], options: DistillOptions) -> dict[str, Any]:
    """Identical architecture, initial weights, seed and schedule, hard labels only. Measured in
    torch (it is never exported or served), on the same test split as the variants."""
    seed_everything(options.train.seed)
    alone = copy.deepcopy(trained)
    alone.load_state_dict(initial)
    with ctx.progress.step("baseline: same student without the teacher") as step:
        result = fit(alone, ctx.splits, options.train, ctx.progress, "baseline")
        test = outputs_of(alone, ctx.splits.x_test)
        teacher_top1 = outputs_of(teacher, ctx.splits.x_test).argmax(dim=1)
        quality = {"accuracy": round(accuracy(test, ctx.splits.y_test), 6),
                   "agreement": round(float((test.argmax(dim=1) == teacher_top1).float().mean()), 6)}
        step.note(f"test accuracy {quality['accuracy']:.4f}")
    return {"parameters": count_macs_params(alone, ctx.example)[1], "quality": quality,
            "recipe": {"name": "train", "params": {"loss": "CE(s,y)", **options.train.as_params()}},
            "build_seconds": round(result.seconds, 2)}


def make_pruned(ctx: BuildContext, spec: VariantMaker, path: Path) -> Made:
    """Structural pruning of the parent's neurons / channels, each step followed by recovery
    distilled from the parent."""
    parent = ctx.made[spec.parent].module
    options = ctx.options.prune
    guide = replace(ctx.options.distill, loss=ctx.distill_loss(), train=replace(
        ctx.options.distill.train, epochs=options.finetune_epochs, lr=ctx.options.prune_finetune_lr))
    seed_everything(guide.train.seed)
    model = copy.deepcopy(parent)
    keep = output_layers(model, ctx.example, ctx.teacher.output_layer)
    task = ctx.teacher.task
    rows = {k: v[:256] for k, v in ctx.splits.x_train.items()}
    targets = outputs_of(parent, rows)

    def finetune(pruned: nn.Module, epochs: int, step_no: int) -> None:
        if epochs > 0:
            recovery = replace(guide, train=replace(guide.train, epochs=epochs))
            distill(pruned, parent, ctx.splits, recovery, ctx.progress, f"{spec.name} step {step_no}", task)

    def gradient_loss(m: nn.Module) -> torch.Tensor:
        out = m(*tensors(rows))
        if guide.loss == "kd":
            return kd_loss(out, targets, None, guide.temperature, 1.0)
        return feature_loss(out, targets, guide.loss)

    with ctx.progress.step(f"{spec.name}: prune {options.ratio:.0%} of hidden neurons/channels "
                           f"({options.importance}, {options.steps} step(s)), recover "
                           f"{options.finetune_epochs} epochs") as step:
        report = prune(model, ctx.example, keep, options, finetune, gradient_loss)
        step.note(f"widths {list(report.widths_before.values())} -> "
                  f"{list(report.widths_after.values())}, parameters "
                  f"{report.params_before} -> {report.params_after}")
    _export(ctx, model, path)
    kept_names = [n for n, m in model.named_modules() if any(m is k for k in keep)]
    recipe = {"name": "prune", "params": {
        "library": "torch_pruning", "pruner": "BasePruner (dependency graph)",
        "importance": options.importance, "ratio": options.ratio, "steps": options.steps,
        "round_to": options.round_to, "ignored_layers": kept_names, "scope": "per layer",
        "widths_before": report.widths_before, "widths_after": report.widths_after,
        "parameters_before": report.params_before, "parameters_after": report.params_after,
        "macs_before": report.macs_before, "macs_after": report.macs_after,
        "schedule": report.steps,
        "recovery": {"loss": guide.loss, "guide": spec.parent,
                     **({"temperature": guide.temperature, "alpha": guide.alpha}
                        if guide.loss == "kd" else {}),
                     **guide.train.as_params()}}}
    return Made(recipe, report.macs_after, model)


def make_int8(ctx: BuildContext, spec: VariantMaker, path: Path) -> Made:
    """int8 of the parent's ONNX file, within the quality budget (see modelrepo.int8)."""
    options = ctx.options.quantize
    parent_file = ctx.files[spec.parent]
    x_val = ctx.splits.x_val
    reference = run(open_session(parent_file), x_val)
    budget = budget_for(ctx.teacher.task, reference, ctx.splits.y_val, options)
    reduce_range = resolved_reduce_range(options, cpu_flags())
    samples = len(next(iter(ctx.calibration.values())))
    what = (f"{options.calibration_method}, {samples} samples" if options.mode == "static" else "dynamic")
    with ctx.progress.step(f"{spec.name}: quantize {spec.parent} ({what})") as step:
        result = search(parent_file, path, ctx.calibration, x_val, reference, budget, options,
                        reduce_range, lambda line: ctx.progress.line(f"{spec.name}: {line}"))
        step.note(f"{budget.metric} {budget.parent_value:.4f} -> {result.value:.4f} on validation, "
                  f"budget {'met' if result.met else 'MISSED'}, fp32 nodes: "
                  f"{', '.join(result.fp32_nodes) or 'none'}")
    params = {"source": spec.parent, **options.as_params(),
              "calibration_samples": samples if options.mode == "static" else None,
              "reduce_range": reduce_range,
              "budget": budget.as_params(), "accuracy_aware": options.accuracy_aware,
              "budget_met": result.met, "validation_value": round(result.value, 6),
              "fp32_nodes": result.fp32_nodes, "attempts": result.attempts,
              "sensitivity": result.sensitivity,
              "int8_weight_elements": int8_weights(path),
              "checked_on": {"runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
                             "cpu": ctx.host.get("cpu"),
                             "int8_features": ctx.host.get("int8_features", [])}}
    if options.mode == "dynamic":
        params.pop("calibration_samples")
    name = "quantize_static" if options.mode == "static" else "quantize_dynamic"
    return Made({"name": name, "params": params}, ctx.made[spec.parent].macs)


def make_shared(ctx: BuildContext, spec: VariantMaker, path: Path) -> Made:
    """Deep Compression weight sharing of the parent's ONNX file (storage only)."""
    options = ctx.options.share
    source = ctx.files[spec.parent]
    with ctx.progress.step(f"{spec.name}: share weights of {spec.parent} "
                           f"({2 ** options.bits} values per matrix)") as step:
        matrices = share_weights(source, path, options)
        step.note(f"{len(matrices)} matrices, file {source.stat().st_size:,} -> "
                  f"{path.stat().st_size:,} bytes")
    recipe = {"name": "share_weights", "params": {
        "source": spec.parent, **options.as_params(), "matrices": matrices,
        "file_bytes_before": source.stat().st_size, "file_bytes_after": path.stat().st_size}}
    return Made(recipe, ctx.made[spec.parent].macs)


# name -> spec; a chain is one line (the int8 maker quantizes whatever its parent wrote).
VARIANTS: dict[str, VariantMaker] = {spec.name: spec for spec in (
    VariantMaker("teacher", "teacher", None, make_teacher),
    VariantMaker("distilled", "distilled", "teacher", make_distilled, trains=True),
    VariantMaker("pruned", "pruned", "teacher", make_pruned, trains=True),
    VariantMaker("int8", "int8", "teacher", make_int8),
    VariantMaker("distilled+int8", "distilled+int8", "distilled", make_int8),
    VariantMaker("pruned+int8", "pruned+int8", "pruned", make_int8),
    VariantMaker("shared", "shared", "teacher", make_shared),
)}


def plan(requested: Sequence[str], trainable: bool = True) -> list[str]:
    """Variants to build in order: the teacher first, every parent before its children.

    Without a torch teacher (ONNX), variants that need training, or whose parent does, are refused.
    """
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
    if not trainable:
        needs = [n for n in requested if any(VARIANTS[v].trains for v in _lineage(n))]
        if needs:
            allowed = [n for n, s in VARIANTS.items()
                       if n != "teacher" and not any(VARIANTS[v].trains for v in _lineage(n))]
            raise UsageError(f"variant {needs[0]!r} needs training, which an ONNX teacher does "
                             f"not allow; variants for ONNX teachers: {', '.join(allowed)}")
    return order


def _lineage(name: str) -> list[str]:
    chain = []
    while name is not None:
        chain.append(name)
        name = VARIANTS[name].parent
    return chain
