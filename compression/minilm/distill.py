"""Embedding distillation: a student trained to reproduce the teacher's sentence embeddings.

The student of the `distilled` variant is the teacher cut to a few of its layers (DistilBERT's
initialisation from every other teacher layer, Sanh et al. 2019, arXiv:1910.01108); the same loop
recovers the pruned model. The loss is on the output embedding only, as in Reimers & Gurevych 2020
(arXiv:2004.09813), which regress a student's sentence embeddings onto a teacher's:

    L = mean_i (1 - cos(s_i, t_i))         s_i student, t_i teacher embedding of sentence i

For unit vectors this equals half the squared error ||s_i - t_i||² / 2, so it is the MSE objective
on normalised embeddings. Training uses AdamW with linear warm-up then cosine decay, length-bucketed batches padded
to their longest sentence, bfloat16 autocast where the CPU has it (validation in fp32), a fixed seed, and keeps the epoch with the best validation cosine
(early stopping after `patience` epochs without improvement).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from compression.minilm.teacher import MeanPooled, torch_embed
from compression.progress import Progress
from compression.train import seed_everything

__all__ = ["DistillOptions", "DistillResult", "cosine_distillation_loss", "distill", "layer_subset",
           "token_distillation_loss", "without_dropout"]


@dataclass(frozen=True)
class DistillOptions:
    epochs: int = 8
    lr: float = 5e-4
    batch_size: int = 64
    weight_decay: float = 0.01
    warmup: float = 0.05
    """Share of all steps spent warming the learning rate up from 0."""
    patience: int = 2
    seed: int = 0
    max_train: int | None = None
    """Train on at most this many training sentences (None: all)."""
    freeze_embeddings: bool = True
    """Keep the teacher's token, position and type embeddings fixed (only the layers learn)."""
    token_weight: float = 1.0
    """Weight of the token-vector term (0: sentence embedding only); needs the teacher's token vectors."""
    bf16: bool | None = None
    """bfloat16 autocast for the forward pass (weights and optimizer stay fp32). None: on when the CPU
    has bfloat16 instructions (AMX or AVX512-BF16), where it halves the step time; emulated otherwise."""

    def use_bf16(self) -> bool:
        return cpu_has_bf16() if self.bf16 is None else self.bf16

    def as_params(self) -> dict[str, object]:
        return {**asdict(self), "bf16": self.use_bf16(), "optimizer": "adamw", "lr_schedule": "linear warm-up, cosine decay",
                "loss": "1 - cos(student, teacher) on the sentence embedding",
                "batching": "length-bucketed, padded to the longest in batch"}


@dataclass(frozen=True)
class DistillResult:
    epochs_run: int
    best_epoch: int
    val_cosine: float
    seconds: float


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (flags amx_bf16 or avx512_bf16)."""
    try:
        text = open("/proc/cpuinfo", encoding="ascii", errors="replace").read()
    except OSError:
        return False
    return "amx_bf16" in text or "avx512_bf16" in text


def cosine_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(student_i, teacher_i)); see the module docstring."""
    return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()


def token_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relative squared error of the token vectors that are pooled: Σ||h_s - h_t||² / Σ||h_t||²
    over the real tokens of the batch (rows of `student` and `teacher`, [tokens, 384])."""
    return ((student - teacher) ** 2).sum() / (teacher ** 2).sum().clamp(min=1e-12)


def layer_subset(model: MeanPooled, layers: list[int]) -> MeanPooled:
    """A copy of `model` keeping only the encoder layers at `layers` (in that order)."""
    encoder = model.encoder
    total = len(encoder.encoder.layer)
    if not layers or any(i < 0 or i >= total for i in layers):
        raise ValueError(f"layers {layers} must be indices into the teacher's {total} layers")
    student = copy.deepcopy(model)
    kept = [student.encoder.encoder.layer[i] for i in layers]
    student.encoder.encoder.layer = nn.ModuleList(kept)
    student.encoder.config.num_hidden_layers = len(kept)
    return student


def without_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout to 0: the target is deterministic, and few epochs leave little to regularise."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _val_cosine(model: nn.Module, ids: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> float:
    emb = torch_embed(model, ids, mask)
    return float((emb * targets).sum(axis=1).mean())


def _batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of similar length: shuffle, sort pools of 16 batches by length, cut, shuffle.

    Short and long sentences then rarely share a batch, so little compute goes to padding.
    """
    perm = torch.randperm(len(lengths), generator=generator)
    pool = batch_size * 16
    batches = []
    for start in range(0, len(perm), pool):
        rows = perm[start:start + pool]
        rows = rows[torch.argsort(torch.from_numpy(lengths[rows.numpy()]), stable=True)]
        batches.extend(rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order]


def distill(student: MeanPooled, train: tuple[np.ndarray, np.ndarray, np.ndarray],
            val: tuple[np.ndarray, np.ndarray, np.ndarray], options: DistillOptions,
            progress: Progress, desc: str, train_tokens: np.ndarray | None = None) -> DistillResult:
    """Train `student` in place on (ids, mask, teacher embedding) rows; keep its best epoch.

    `train_tokens` holds the teacher's token vectors of the training rows as
    `teacher.torch_embed_with_tokens` returns them; with it and `options.token_weight` > 0 the loss
    adds `token_weight · token_distillation_loss` (TinyBERT-style matching of the last layer,
    Jiao et al. 2020, arXiv:1909.10351), which gives the student a target per token rather than
    one per sentence.
    """
    began = time.monotonic()
    seed_everything(options.seed)
    ids, mask, targets = train
    lengths = mask.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if options.max_train is not None:
        ids, mask, targets = ids[:options.max_train], mask[:options.max_train], targets[:options.max_train]
        lengths, starts = lengths[:options.max_train], starts[:options.max_train]
    use_tokens = train_tokens is not None and options.token_weight > 0
    bf16 = options.use_bf16()
    if options.freeze_embeddings:
        student.encoder.embeddings.requires_grad_(False)
    trainable = [p for p in student.parameters() if p.requires_grad]
    order = torch.Generator().manual_seed(options.seed)
    steps_per_epoch = math.ceil(len(ids) / options.batch_size)
    total = steps_per_epoch * options.epochs
    warmup = max(1, int(total * options.warmup))
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        step / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))))
    best_cos = _val_cosine(student, *val)
    best_epoch, best_state, epoch = 0, copy.deepcopy(student.state_dict()), 0
    ids_t, mask_t, targets_t = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(targets)
    with progress.bar(total, desc) as bar:
        for epoch in range(1, options.epochs + 1):
            student.train()
            for rows in _batches(lengths, options.batch_size, order):
                r = rows.numpy()
                width = int(lengths[r].max())
                optimizer.zero_grad(set_to_none=True)
                batch_mask = mask_t[rows, :width]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    hidden, out = student.tokens_and_embedding(ids_t[rows, :width], batch_mask)
                hidden, out = hidden.float(), out.float()
                loss = cosine_distillation_loss(out, targets_t[rows])
                if use_tokens:
                    picked = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in r])
                    target_tokens = torch.from_numpy(train_tokens[picked].astype(np.float32))
                    loss = loss + options.token_weight * token_distillation_loss(
                        hidden[batch_mask.bool()], target_tokens)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
            cos = _val_cosine(student, *val)
            progress.line(f"{desc}: epoch {epoch}, validation cosine {cos:.4f}")
            if cos > best_cos:
                best_cos, best_epoch, best_state = cos, epoch, copy.deepcopy(student.state_dict())
            elif epoch - best_epoch >= options.patience:
                break
    student.load_state_dict(best_state)
    student.requires_grad_(True)
    student.eval()
    return DistillResult(epoch, best_epoch, round(best_cos, 5), round(time.monotonic() - began, 1))
