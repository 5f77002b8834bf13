"""The training loop: best epoch kept, early stopping on validation, fixed seeds."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compression.data import split_arrays
from compression.progress import Progress
from compression.train import TrainOptions, fit


def splits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    return split_arrays("toy", {"x": x}, (x[:, 0] > 0).astype(np.int64), 0)


def test_early_stopping_ends_after_patience_epochs_without_progress() -> None:
    model = nn.Linear(8, 2)
    result = fit(model, splits(), TrainOptions(epochs=50, lr=0.0, patience=3), Progress(quiet=True), "t")
    assert result.best_epoch == 0 and result.epochs_run == 3


def test_same_seed_same_model_and_best_epoch_restored() -> None:
    data = splits()
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        result = fit(model, data, TrainOptions(epochs=20, lr=2e-2, seed=5), Progress(quiet=True), "t")
        runs.append((result, torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert runs[0][0].best_epoch == runs[1][0].best_epoch >= 1
    assert torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0].val_score > 0.8
