"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a small student learns the teacher's soft targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from compression.data import Splits
from compression.progress import Progress
from compression.train import LossFn, TrainOptions, TrainResult, fit, logits_of

__all__ = ["DistillOptions", "distill", "kd_loss", "kd_loss_fn"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """The distillation loss of Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
    Network" (NIPS 2014 Deep Learning Workshop, arXiv:1503.02531, 2015):

        L = α · T² · KL( softmax(t/T) ‖ softmax(s/T) )  +  (1 − α) · CE( s, y )

    with s, t the student and teacher logits, T the temperature, y the hard labels. The KL term
    is taken against the teacher's softened distribution (PyTorch's `kl_div(log_softmax(s/T),
    softmax(t/T))`), i.e. the cross-entropy to the soft targets minus the teacher's entropy, which
    does not depend on the student. Its gradients scale as 1/T², hence the T² factor (section 2
    of the paper) keeps the soft and hard terms comparable as T changes. Both terms are means
    over the batch. With α = 1 and s = t the loss and its gradient are zero.
    """
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean") * temperature ** 2
    if alpha >= 1.0:
        return alpha * soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def kd_loss_fn(teacher_logits: torch.Tensor, temperature: float, alpha: float) -> LossFn:
    """`kd_loss` as a training-loop loss, with the teacher's logits precomputed per training row."""
    def loss(student_logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits[rows], labels, temperature, alpha)
    return loss


@dataclass(frozen=True)
class DistillOptions:
    temperature: float = 4.0
    alpha: float = 0.9
    """Weight of the soft (teacher) term; 1 − alpha goes to the hard labels."""
    train: TrainOptions = TrainOptions(epochs=60)

    def as_params(self) -> dict[str, object]:
        return {"paper": "Hinton, Vinyals, Dean 2015, Distilling the Knowledge in a Neural Network",
                "loss": "alpha*T^2*KL(softmax(t/T)||softmax(s/T)) + (1-alpha)*CE(s,y)",
                "temperature": self.temperature, "alpha": self.alpha,
                "transfer_set": "train", **self.train.as_params()}


def distill(student: nn.Module, teacher: nn.Module, splits: Splits, options: DistillOptions,
            progress: Progress, desc: str = "distill") -> TrainResult:
    """Train `student` in place on the training split against `teacher`'s soft targets.

    The teacher runs once in eval mode (no dropout) over the transfer set; its logits are the
    fixed targets, which is what the paper does and saves a teacher forward pass per step.
    """
    targets = logits_of(teacher, splits.x_train)
    loss = kd_loss_fn(targets, options.temperature, options.alpha)
    return fit(student, splits, options.train, progress, desc, loss_fn=loss)
