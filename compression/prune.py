"""Structural pruning with Torch-Pruning: whole hidden neurons go, so the weight tensors really shrink."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["IMPORTANCES", "PruneOptions", "PruneReport", "count_macs_params", "prune"]

# Criteria by name. Magnitude (L2 over the whole coupled group: a neuron's fan-in row, bias and
# the next layer's fan-out column) is the classic choice for MLPs and needs no data.
IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude-l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "magnitude-l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
}


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = 0.5
    """Fraction of each hidden layer's neurons removed (the output layer is never pruned)."""
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
    widths_before: list[int]
    widths_after: list[int]
    steps: list[dict[str, int]] = field(default_factory=list)


def count_macs_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs per sample, parameters) as Torch-Pruning counts them, for a batch-of-one example.

    Its MAC count covers the matrix products plus one operation per bias add and per ReLU output.
    """
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs), int(params)


def _widths(model: nn.Module, keep: nn.Module) -> list[int]:
    return [m.out_features for m in model.modules() if isinstance(m, nn.Linear) and m is not keep]


def prune(model: nn.Module, example: torch.Tensor, output_layer: nn.Module, options: PruneOptions,
          finetune: Callable[[nn.Module, int, int], None]) -> PruneReport:
    """Prune `model` in place and call `finetune(model, epochs, step)` after every step.

    `output_layer` is left whole so the logits keep their classes; the dependency graph carries
    each removed neuron through to the next layer's inputs.
    """
    if options.importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {options.importance!r}")
    macs0, params0 = count_macs_params(model, example)
    report = PruneReport(macs0, params0, macs0, params0, _widths(model, output_layer),
                         _widths(model, output_layer))
    pruner = tp.pruner.BasePruner(
        model, example, importance=IMPORTANCES[options.importance](),
        pruning_ratio=options.ratio, iterative_steps=options.steps,
        ignored_layers=[output_layer], round_to=options.round_to)
    # Split the recovery epochs over the steps; the last step takes any remainder.
    per_step = [options.finetune_epochs // options.steps] * options.steps
    per_step[-1] += options.finetune_epochs - sum(per_step)
    model.eval()  # structure is found from a traced forward pass; dropout must be off
    for step in range(1, options.steps + 1):
        pruner.step()
        macs, params = count_macs_params(model, example)
        report.steps.append({"step": step, "macs": macs, "parameters": params,
                             "finetune_epochs": per_step[step - 1]})
        finetune(model, per_step[step - 1], step)
    report.macs_after, report.params_after = count_macs_params(model, example)
    report.widths_after = _widths(model, output_layer)
    return report
