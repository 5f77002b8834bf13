"""A small, deterministic training loop that keeps the best epoch on validation (DDP-aware)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from compression import distributed
from compression.data import Splits
from compression.progress import Progress
from modelrepo.measure import count

__all__ = ["LossFn", "ScoreFn", "TrainOptions", "TrainResult", "accuracy", "fit", "label_score",
           "outputs_of", "seed_everything", "tensors"]

# loss(model outputs, labels or None, row indices into the training split) -> scalar.
# The indices let a loss look up per-row targets such as precomputed teacher outputs.
LossFn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]
# score(model) -> (reported validation metric, tie-breaker); higher is better on both.
ScoreFn = Callable[[nn.Module], tuple[float, float]]

# One thread, fixed: float sums depend on how work is split across threads, so the same seed
# gives the same model on any machine; and these small matrices gain little from a second
# thread while OpenMP barriers collapse (10x slower measured) when other work shares the cores.
TRAIN_THREADS = 1
EVAL_ROWS = 2048


@dataclass(frozen=True)
class TrainOptions:
    epochs: int
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    patience: int | None = None
    """Stop after this many epochs without a better validation score (None: run all epochs)."""
    seed: int = 0

    def as_params(self) -> dict[str, object]:
        """The settings as recorded in a manifest recipe."""
        return {"epochs": self.epochs, "optimizer": "adam", "lr": self.lr,
                "lr_schedule": "cosine", "batch_size": self.batch_size,
                "weight_decay": self.weight_decay, "patience": self.patience, "seed": self.seed,
                **distributed.describe()}


@dataclass(frozen=True)
class TrainResult:
    epochs_run: int
    best_epoch: int
    val_score: float
    """The score function's reported metric at the best epoch (e.g. validation accuracy)."""
    seconds: float


def seed_everything(seed: int) -> None:
    """Seed torch and pin its thread count so runs repeat bit for bit."""
    torch.manual_seed(seed)
    torch.set_num_threads(TRAIN_THREADS)


def tensors(x: Mapping[str, np.ndarray], rows: slice | np.ndarray = slice(None)) -> tuple[torch.Tensor, ...]:
    """The model's positional arguments: the named input arrays (in input order) at `rows`."""
    return tuple(torch.from_numpy(np.ascontiguousarray(a[rows])) for a in x.values())


@torch.no_grad()
def outputs_of(model: nn.Module, x: Mapping[str, np.ndarray]) -> torch.Tensor:
    """Eval-mode outputs (the first output when there are several) for every row of the inputs."""
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, count(x), EVAL_ROWS):
        out = model(*tensors(x, slice(start, start + EVAL_ROWS)))
        parts.append(out[0] if isinstance(out, (tuple, list)) else out)
    model.train(was_training)
    return torch.cat(parts)



def accuracy(logits: torch.Tensor, y: np.ndarray) -> float:
    return float((logits.argmax(dim=1).numpy() == y).mean())


def label_score(splits: Splits) -> ScoreFn:
    """Validation (accuracy, -cross-entropy): loss breaks accuracy ties."""
    y = torch.from_numpy(splits.y_val)

    def score(model: nn.Module) -> tuple[float, float]:
        logits = outputs_of(model, splits.x_val)
        return accuracy(logits, splits.y_val), -F.cross_entropy(logits, y).item()
    return score


def _epoch_rows(n: int, epoch: int, options: TrainOptions, order: torch.Generator) -> list[torch.Tensor]:
    """This process's batches of row indices for one epoch.

    One process: a seeded permutation in batches of `batch_size`. Under torchrun: a
    DistributedSampler shard, in batches of `batch_size / processes`, so the global batch (and
    with it the recipe) stays the same whatever the number of processes.
    """
    world = distributed.world_size()
    if world == 1:
        perm = torch.randperm(n, generator=order)
        return [perm[i:i + options.batch_size] for i in range(0, n, options.batch_size)]
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=distributed.rank(),
                                 shuffle=True, seed=options.seed)
    sampler.set_epoch(epoch)
    mine = torch.tensor(list(sampler), dtype=torch.long)
    size = max(1, options.batch_size // world)
    return [mine[i:i + size] for i in range(0, len(mine), size)]


def fit(model: nn.Module, splits: Splits, options: TrainOptions, progress: Progress,
        desc: str, loss_fn: LossFn | None = None, score_fn: ScoreFn | None = None) -> TrainResult:
    """Train `model` in place with Adam + cosine decay; leave it holding its best validation epoch.

    `loss_fn` defaults to cross-entropy on the hard labels, `score_fn` to validation accuracy.
    """
    began = time.monotonic()
    torch.manual_seed(options.seed)
    # Our own generator for shuffling, so the order does not depend on what ran before.
    order = torch.Generator().manual_seed(options.seed)
    x = tuple(torch.from_numpy(a) for a in splits.x_train.values())
    y = None if splits.y_train is None else torch.from_numpy(splits.y_train)
    if loss_fn is None or score_fn is None:
        if y is None:
            raise ValueError("training on hard labels needs labelled data")
    loss_fn = loss_fn or (lambda out, labels, rows: F.cross_entropy(out, labels))
    score_fn = score_fn or label_score(splits)
    runner: nn.Module = model
    if distributed.world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(model)  # averages gradients across processes
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr,
                                 weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(options.epochs, 1))
    best_score, best_epoch, best_state = score_fn(model), 0, copy.deepcopy(model.state_dict())
    epoch = 0
    with progress.bar(options.epochs, desc) as bar:
        for epoch in range(1, options.epochs + 1):
            runner.train()
            for rows in _epoch_rows(len(x[0]), epoch, options, order):
                optimizer.zero_grad(set_to_none=True)
                out = runner(*(t[rows] for t in x))
                out = out[0] if isinstance(out, (tuple, list)) else out
                loss = loss_fn(out, None if y is None else y[rows], rows)
                loss.backward()
                optimizer.step()
            schedule.step()
            score = score_fn(model)
            if score > best_score:
                best_score, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
            bar.set_postfix(val=f"{score[0]:.4f}", best=f"{best_score[0]:.4f}")
            bar.update()
            if options.patience is not None and epoch - best_epoch >= options.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(epoch, best_epoch, best_score[0], time.monotonic() - began)
