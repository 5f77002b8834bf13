"""Structural pruning with Torch-Pruning: whole neurons and channels go, so weight tensors shrink.

Works on any module whose layers Torch-Pruning knows (Linear, Conv, batch norms, layer norms, ...):
MLPs, conv nets, and loaded graphs once `compression.lift` has given them real layers. The
dependency graph carries each removed neuron / channel through to every coupled tensor (the next
layer's inputs, batch-norm statistics, residual additions). The layer that produces the model's
output is kept whole: the output shape is the serving contract.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from compression.errors import BuildError

__all__ = ["IMPORTANCES", "PruneOptions", "PruneReport", "count_macs_params", "layer_widths",
           "narrow", "output_layers", "prune", "prunable_layers"]

# Criteria by name. Magnitude (L2 over the whole coupled group: a neuron's fan-in row, bias and
# the next layer's fan-out column) is the classic choice and needs no data; taylor scores each
# group by |weight × gradient| of the distillation loss on a training batch (Molchanov et al. 2019).
IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude-l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "magnitude-l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
}
NEEDS_GRADIENTS = {"taylor"}
PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = 0.5
    """Fraction of each hidden layer's neurons / channels removed (output layers are kept)."""
    steps: int = 1
    """Prune in this many equal steps, fine-tuning after each."""
    importance: str = "magnitude-l2"
    round_to: int | None = 8
    """Keep widths multiples of this (friendlier to SIMD kernels)."""
    finetune_epochs: int = 40


@dataclass
class PruneReport:
    macs_before: int
    params_before: int
    macs_after: int
    params_after: int
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    steps: list[dict[str, int]] = field(default_factory=list)


def count_macs_params(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """(MACs per sample, parameters) as Torch-Pruning counts them, for a batch-of-one example.

    Its MAC count covers the matrix products and convolutions plus one operation per bias add,
    norm and activation output of the layers it hooks.
    """
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, params = tp.utils.count_ops_and_params(model, tuple(t[:1] for t in example))
    model.train(was_training)
    return int(macs), int(params)


def prunable_layers(model: nn.Module, example: tuple[torch.Tensor, ...]) -> list[tuple[str, nn.Module]]:
    """Linear / conv layers in the order the forward pass runs them."""
    names = {id(m): n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append((names[id(mod)], mod)))
             for m in model.modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            model.eval()
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    seen: set[int] = set()
    return [(n, m) for n, m in order if not (id(m) in seen or seen.add(id(m)))]


def output_layers(model: nn.Module, example: tuple[torch.Tensor, ...], named: str | None = None) -> list[nn.Module]:
    """The layers pruning must keep whole: `named` if given, else the last one run."""
    if named:
        return [model.get_submodule(named)]
    layers = prunable_layers(model, example)
    if not layers:
        raise BuildError("pruning: the model has no Linear or Conv layer to prune")
    return [layers[-1][1]]


def layer_widths(model: nn.Module, example: tuple[torch.Tensor, ...], keep: list[nn.Module]) -> dict[str, int]:
    """Output neurons / channels of each prunable layer but the kept ones."""
    def width(m: nn.Module) -> int:
        return m.out_features if isinstance(m, nn.Linear) else m.out_channels

    return {n: width(m) for n, m in prunable_layers(model, example) if all(m is not k for k in keep)}


def _pruner(model: nn.Module, example: tuple[torch.Tensor, ...], keep: list[nn.Module], ratio: float,
            importance: str, steps: int, round_to: int | None) -> tp.pruner.BasePruner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.pruner.BasePruner(model, example, importance=IMPORTANCES[importance](),
                                    pruning_ratio=ratio, iterative_steps=steps,
                                    ignored_layers=keep, round_to=round_to)


def _check_outputs(model: nn.Module, example: tuple[torch.Tensor, ...], shape: torch.Size, what: str) -> None:
    try:
        with torch.no_grad():
            out = model(*example)
    except Exception as error:
        raise BuildError(f"{what}: the model no longer runs after removing channels "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                         "a reshape with a fixed size in forward() cannot follow pruning") from error
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.shape != shape:
        raise BuildError(f"{what}: output shape changed {list(shape)} -> {list(out.shape)}")


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[return-value]


def prune(model: nn.Module, example: tuple[torch.Tensor, ...], keep: list[nn.Module], options: PruneOptions,
          finetune: Callable[[nn.Module, int, int], None],
          loss_for_gradients: Callable[[nn.Module], torch.Tensor] | None = None) -> PruneReport:
    """Prune `model` in place and call `finetune(model, epochs, step)` after every step.

    `keep` are left whole so the outputs keep their shape. Gradient-based importances call
    `loss_for_gradients(model).backward()` before each step.
    """
    if options.importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {options.importance!r}")
    model.eval()  # structure is found from a traced forward pass; dropout must be off
    shape = _first(model(*example)).shape
    macs0, params0 = count_macs_params(model, example)
    widths0 = layer_widths(model, example, keep)
    if not widths0:
        raise BuildError("pruning: no Linear or Conv layer besides the output layer; nothing to prune")
    report = PruneReport(macs0, params0, macs0, params0, widths0, dict(widths0))
    pruner = _pruner(model, example, keep, options.ratio, options.importance, options.steps,
                     options.round_to)
    # Split the recovery epochs over the steps; the last step takes any remainder.
    per_step = [options.finetune_epochs // options.steps] * options.steps
    per_step[-1] += options.finetune_epochs - sum(per_step)
    for step in range(1, options.steps + 1):
        model.eval()
        if options.importance in NEEDS_GRADIENTS:
            if loss_for_gradients is None:
                raise ValueError(f"importance {options.importance!r} needs a loss")
            model.zero_grad(set_to_none=True)
            loss_for_gradients(model).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner.step()
        model.zero_grad(set_to_none=True)
        _check_outputs(model, example, shape, "pruning")
        macs, params = count_macs_params(model, example)
        report.steps.append({"step": step, "macs": macs, "parameters": params,
                             "finetune_epochs": per_step[step - 1]})
        finetune(model, per_step[step - 1], step)
    report.macs_after, report.params_after = count_macs_params(model, example)
    report.widths_after = layer_widths(model, example, keep)
    return report


def narrow(model: nn.Module, example: tuple[torch.Tensor, ...], keep: list[nn.Module], width: float,
           seed: int) -> nn.Module:
    """A fresh student of the same architecture with every hidden width scaled by `width`.

    The teacher is copied, its hidden neurons / channels cut to `width` of their number through
    the same dependency graph as pruning (so couplings stay consistent), then every layer is
    re-initialised from `seed`: the student shares the teacher's shape family, not its weights.
    """
    student = copy.deepcopy(model).eval()
    kept_names = {n for n, m in model.named_modules() if any(m is k for k in keep)}
    kept = [m for n, m in student.named_modules() if n in kept_names]
    shape = _first(student(*example)).shape
    if not layer_widths(student, example, kept):
        raise BuildError("deriving the student: no hidden Linear or Conv layer to narrow; "
                         "give one with --student")
    if width < 1.0:
        pruner = _pruner(student, example, kept, 1.0 - width, "magnitude-l2", 1, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner.step()
        _check_outputs(student, example, shape, "deriving the student")
    torch.manual_seed(seed)
    for module in student.modules():
        if module is not student and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return student
