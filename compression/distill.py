"""Knowledge distillation: a student learns to reproduce the teacher's outputs.

Classifiers use Hinton, Vinyals & Dean (2015) soft targets (`kd_loss`); other teachers (embedders,
regressors) use feature / embedding distillation on the output: mean squared error or cosine
distance between student and teacher outputs (`feature_loss`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from compression.data import Splits
from compression.progress import Progress
from compression.train import LossFn, ScoreFn, TrainOptions, TrainResult, fit, label_score, outputs_of

__all__ = ["DISTILL_LOSSES", "DistillOptions", "distill", "feature_loss", "fidelity_score",
           "kd_loss", "kd_loss_fn"]

DISTILL_LOSSES = ("kd", "mse", "cosine")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
            temperature: float, alpha: float) -> torch.Tensor:
    """The distillation loss of Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
    Network" (NIPS 2014 Deep Learning Workshop, arXiv:1503.02531, 2015):

        L = α · T² · KL( softmax(t/T) ‖ softmax(s/T) )  +  (1 − α) · CE( s, y )

    with s, t the student and teacher logits, T the temperature, y the hard labels. The KL term
    is taken against the teacher's softened distribution (PyTorch's `kl_div(log_softmax(s/T),
    softmax(t/T))`), i.e. the cross-entropy to the soft targets minus the teacher's entropy, which
    does not depend on the student. Its gradients scale as 1/T², hence the T² factor (section 2
    of the paper) keeps the soft and hard terms comparable as T changes. Both terms are means
    over the batch. With α = 1 and s = t the loss and its gradient are zero. Without labels
    (`labels` None) only the soft term remains, whatever α.
    """
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean") * temperature ** 2
    if labels is None:
        return soft
    if alpha >= 1.0:
        return alpha * soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Output (feature / embedding) distillation, per row over the flattened output:

        mse:     mean over elements of (s − t)²
        cosine:  mean over rows of 1 − cos(s, t)   (direction only, as embeddings are compared)
    """
    s, t = student.flatten(1), teacher.flatten(1)
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=1)).mean()
    raise ValueError(f"unknown feature loss {kind!r}")


def kd_loss_fn(teacher_logits: torch.Tensor, temperature: float, alpha: float) -> LossFn:
    """`kd_loss` as a training-loop loss, with the teacher's logits precomputed per training row."""
    def loss(student_logits: torch.Tensor, labels: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits[rows], labels, temperature, alpha)
    return loss


@dataclass(frozen=True)
class DistillOptions:
    temperature: float = 4.0
    alpha: float = 0.9
    """Weight of the soft (teacher) term; 1 − alpha goes to the hard labels."""
    loss: str = "kd"
    """kd (classifiers), mse or cosine (output distillation for any teacher)."""
    train: TrainOptions = TrainOptions(epochs=60)

    def as_params(self) -> dict[str, object]:
        if self.loss == "kd":
            head = {"paper": "Hinton, Vinyals, Dean 2015, Distilling the Knowledge in a Neural Network",
                    "loss": "alpha*T^2*KL(softmax(t/T)||softmax(s/T)) + (1-alpha)*CE(s,y)",
                    "temperature": self.temperature, "alpha": self.alpha}
        else:
            head = {"loss": {"mse": "mean((s-t)^2)", "cosine": "mean(1-cos(s,t))"}[self.loss],
                    "target": "teacher output"}
        return {**head, "transfer_set": "train", **self.train.as_params()}


def distill(student: nn.Module, teacher: nn.Module, splits: Splits, options: DistillOptions,
            progress: Progress, desc: str = "distill", task: str = "classification") -> TrainResult:
    """Train `student` in place on the training split against `teacher`'s outputs.

    The teacher runs once in eval mode (no dropout) over the transfer set; its outputs are the
    fixed targets, which is what the paper does and saves a teacher forward pass per step.
    Early stopping and the kept epoch follow validation accuracy when there are labels, else
    agreement / cosine fidelity with the teacher on the validation split.
    """
    targets = outputs_of(teacher, splits.x_train)
    if options.loss == "kd":
        loss = kd_loss_fn(targets, options.temperature, options.alpha)
    else:
        def loss(out: torch.Tensor, labels: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
            return feature_loss(out, targets[rows], options.loss)
    if task == "classification" and splits.labelled:
        score = label_score(splits)
    else:
        score = fidelity_score(outputs_of(teacher, splits.x_val), splits.x_val, task)
    return fit(student, splits, options.train, progress, desc, loss_fn=loss, score_fn=score)


def fidelity_score(teacher_val: torch.Tensor, x_val: Mapping[str, np.ndarray], task: str) -> ScoreFn:
    """Validation score against the teacher: top-1 agreement (classifiers) or mean cosine of the
    outputs; mean squared error breaks ties."""
    def score(model: nn.Module) -> tuple[float, float]:
        out = outputs_of(model, x_val)
        tie = -F.mse_loss(out, teacher_val).item()
        if task == "classification":
            return float((out.argmax(dim=1) == teacher_val.argmax(dim=1)).float().mean()), tie
        return float(F.cosine_similarity(out.flatten(1), teacher_val.flatten(1), dim=1).mean()), tie
    return score
