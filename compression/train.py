"""A small, deterministic supervised training loop that keeps the best epoch on validation."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from compression.data import Splits
from compression.progress import Progress

__all__ = ["LossFn", "TrainOptions", "TrainResult", "accuracy", "fit", "logits_of", "seed_everything"]

# loss(student logits, labels, row indices into the training split) -> scalar.
# The indices let a loss look up per-row targets such as precomputed teacher logits.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# One thread, fixed: float sums depend on how work is split across threads, so the same seed
# gives the same model on any machine; and these small matrices gain little from a second
# thread while OpenMP barriers collapse (10x slower measured) when other work shares the cores.
TRAIN_THREADS = 1


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
                "weight_decay": self.weight_decay, "patience": self.patience, "seed": self.seed}


@dataclass(frozen=True)
class TrainResult:
    epochs_run: int
    best_epoch: int
    val_accuracy: float
    seconds: float


def seed_everything(seed: int) -> None:
    """Seed torch and pin its thread count so runs repeat bit for bit."""
    torch.manual_seed(seed)
    torch.set_num_threads(TRAIN_THREADS)


@torch.no_grad()
def logits_of(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    """Eval-mode logits for a whole array (these data sets fit in one batch)."""
    was_training = model.training
    model.eval()
    out = model(torch.from_numpy(x))
    model.train(was_training)
    return out


def accuracy(logits: torch.Tensor, y: np.ndarray) -> float:
    return float((logits.argmax(dim=1).numpy() == y).mean())


def _score(model: nn.Module, splits: Splits) -> tuple[float, float]:
    """Validation (accuracy, -cross-entropy): higher is better, loss breaks accuracy ties."""
    logits = logits_of(model, splits.x_val)
    loss = F.cross_entropy(logits, torch.from_numpy(splits.y_val)).item()
    return accuracy(logits, splits.y_val), -loss


def fit(model: nn.Module, splits: Splits, options: TrainOptions, progress: Progress,
        desc: str, loss_fn: LossFn | None = None) -> TrainResult:
    """Train `model` in place with Adam + cosine decay; leave it holding its best validation epoch.

    `loss_fn` defaults to cross-entropy on the hard labels.
    """
    began = time.monotonic()
    torch.manual_seed(options.seed)
    # Our own generator for shuffling, so the order does not depend on what ran before.
    order = torch.Generator().manual_seed(options.seed)
    x = torch.from_numpy(splits.x_train)
    y = torch.from_numpy(splits.y_train)
    loss_fn = loss_fn or (lambda logits, labels, rows: F.cross_entropy(logits, labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr,
                                 weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(options.epochs, 1))
    best_score, best_epoch, best_state = _score(model, splits), 0, copy.deepcopy(model.state_dict())
    epoch = 0
    with progress.bar(options.epochs, desc) as bar:
        for epoch in range(1, options.epochs + 1):
            model.train()
            perm = torch.randperm(len(x), generator=order)
            for start in range(0, len(x), options.batch_size):
                rows = perm[start:start + options.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[rows]), y[rows], rows)
                loss.backward()
                optimizer.step()
            schedule.step()
            score = _score(model, splits)
            if score > best_score:
                best_score, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
            bar.set_postfix(val_acc=f"{score[0]:.4f}", best=f"{best_score[0]:.4f}")
            bar.update()
            if options.patience is not None and epoch - best_epoch >= options.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(epoch, best_epoch, best_score[0], time.monotonic() - began)
