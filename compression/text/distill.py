"""Knowledge distillation of a BERT-family student onto its teacher's outputs, for embeddings and classifiers.

The student is usually the teacher cut to a few of its layers (`model.keep_layers`; DistilBERT's
initialisation from teacher layers, Sanh et al. 2019, arXiv:1910.01108) or the pruned teacher
(`prune.prune`), recovering. One loop serves both tasks; per batch of sentences i:

- embeddings (Reimers & Gurevych 2020, arXiv:2004.09813, regress the student's sentence embedding
  onto the teacher's):

      L = mean_i (1 - cos(s_i, t_i))  [+ mean_i ||s_i - t_i||² / ||t_i||²  when the model does not
                                        L2-normalise, so the scale is learnt too]

  (for unit vectors 1 - cos = ||s - t||² / 2: the MSE objective on normalised embeddings);
- classifiers (Hinton, Vinyals & Dean 2015, arXiv:1503.02531, with temperature T and weight α):

      L = α · T² · KL(softmax(t_i / T) ‖ softmax(s_i / T)) + (1 - α) · CE(s_i, y_i)

  when the training sentences have labels y, else the KD term alone (weight 1): the student then
  learns the teacher's full output distribution, which needs no labels;

- both, when the teacher's last-layer token vectors are given and `token_weight` > 0, add
  `token_weight · Σ||h_s - h_t||² / Σ||h_t||²` over the real tokens of the batch (TinyBERT's matching
  of hidden states, Jiao et al. 2020, arXiv:1909.10351), a target per token rather than per sentence;
  and with intermediate targets (`train_states`: student layer k ↦ the teacher's token vectors after
  a chosen teacher layer) the same term for each, weighted `layer_weight`.

Training uses AdamW with linear warm-up then cosine decay, length-bucketed batches padded to their
longest sentence, bfloat16 autocast where the CPU has it (validation in fp32), a fixed seed, and keeps
the epoch with the best validation score (early stopping after `patience` epochs without
improvement). The score is the mean cosine to the teacher (embeddings), or for classifiers the
accuracy when validation labels exist, else top-1 agreement with the teacher (ties broken by the
lower validation KD loss).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from compression.progress import Progress
from compression.text.model import TextModel, layer_list
from compression.text.run import torch_outputs
from compression.train import seed_everything

__all__ = ["DistillOptions", "DistillResult", "cpu_has_bf16", "cosine_distillation_loss", "distill",
           "kd_loss", "score", "token_distillation_loss"]


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
    freeze_layers: tuple[int, ...] = ()
    """Student layers kept fixed. Freezing the first layer as well as the embeddings skips its whole
    backward pass (nothing below it learns): about 2/9 of a 3-layer student's step time."""
    token_weight: float = 1.0
    """Weight of the token-vector term (0: outputs only); needs the teacher's token vectors."""
    bf16: bool | None = None
    """bfloat16 autocast for the forward pass (weights and optimizer stay fp32). None: on when the CPU
    has bfloat16 instructions (AMX or AVX512-BF16), where it halves the step time; emulated otherwise."""
    temperature: float = 2.0
    """Classifiers: softmax temperature T of the KD term."""
    alpha: float = 0.5
    """Classifiers with labels: weight of the KD term (1 - alpha on cross-entropy with the labels)."""
    threads: int | None = None
    """torch threads while training (None: compression.train's fixed count, for bit-repeatable runs)."""
    layer_weight: float = 1.0
    """Weight of each intermediate hidden-state term (only when `train_states` is given)."""
    max_seconds: float | None = None
    """Stop training after this many seconds (the current epoch is cut short and validated); a bound,
    not a schedule: choose epochs and max_train so that it is not normally reached."""

    def use_bf16(self) -> bool:
        return cpu_has_bf16() if self.bf16 is None else self.bf16

    def as_params(self, task: str | None = None, labelled: bool = False) -> dict[str, object]:
        """The options as recorded in the manifest, with the loss spelled out for `task`."""
        if task == "embedding":
            loss = "1 - cos(student, teacher) on the served embedding"
        elif task == "classification":
            loss = (f"{self.alpha} * T^2 * KL(softmax(t/T) || softmax(s/T)) + {1 - self.alpha:g} * CE(s, label), "
                    f"T={self.temperature}" if labelled else
                    f"T^2 * KL(softmax(t/T) || softmax(s/T)), T={self.temperature} (no labels)")
        else:
            loss = "embeddings: 1 - cos; classifiers: Hinton KD (+ CE with labels)"
        if self.token_weight > 0:
            loss += f" + {self.token_weight} * relative squared error of last-layer token vectors"
        params: dict[str, object] = {**asdict(self), "bf16": self.use_bf16(), "optimizer": "adamw",
                                     "lr_schedule": "linear warm-up, cosine decay", "loss": loss,
                                     "batching": "length-bucketed, padded to the longest in batch"}
        if task == "embedding":
            params.pop("temperature")
            params.pop("alpha")
        return params


@dataclass(frozen=True)
class DistillResult:
    epochs_run: int
    best_epoch: int
    val_score: float
    seconds: float
    metric: str = "cosine"
    """What val_score is: "cosine" (embeddings), "accuracy" or "agreement" (classifiers)."""
    start_score: float | None = None
    """The validation score before training."""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (flags amx_bf16 or avx512_bf16)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    return "amx_bf16" in text or "avx512_bf16" in text


def cosine_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(student_i, teacher_i))."""
    return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()


def token_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relative squared error Σ||h_s - h_t||² / Σ||h_t||² over the rows ([tokens, hidden]) given."""
    return ((student - teacher) ** 2).sum() / (teacher ** 2).sum().clamp(min=1e-12)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · mean_i KL(softmax(t_i/T) ‖ softmax(s_i/T)) (Hinton et al. 2015; T² keeps gradients
    comparable across temperatures)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def _embedding_loss(student: torch.Tensor, teacher: torch.Tensor, normalized: bool) -> torch.Tensor:
    loss = cosine_distillation_loss(student, teacher)
    if not normalized:
        loss = loss + (((student - teacher) ** 2).sum(dim=1)
                       / (teacher ** 2).sum(dim=1).clamp(min=1e-12)).mean()
    return loss


def score(task: str, outputs: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None = None
          ) -> tuple[str, float]:
    """(metric, value): mean cosine to the teacher for embeddings; for classifiers accuracy with
    labels, else top-1 agreement with the teacher."""
    if task == "embedding":
        a = outputs / np.maximum(np.linalg.norm(outputs, axis=1, keepdims=True), 1e-12)
        b = teacher / np.maximum(np.linalg.norm(teacher, axis=1, keepdims=True), 1e-12)
        return "cosine", float((a * b).sum(axis=1).mean())
    if labels is not None:
        return "accuracy", float((outputs.argmax(axis=1) == labels).mean())
    return "agreement", float((outputs.argmax(axis=1) == teacher.argmax(axis=1)).mean())


def _validate(student: TextModel, task: str, val: tuple[np.ndarray, np.ndarray, np.ndarray],
              labels: np.ndarray | None, temperature: float) -> tuple[str, float, float]:
    """(metric, score, tie-breaker: larger is better)."""
    ids, mask, targets = val
    out = torch_outputs(student, ids, mask)
    metric, value = score(task, out, targets, labels)
    tie = 0.0
    if task == "classification":
        tie = -float(kd_loss(torch.from_numpy(out), torch.from_numpy(targets), temperature))
    return metric, value, tie


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


def distill(student: TextModel, task: str, train: tuple[np.ndarray, np.ndarray, np.ndarray],
            val: tuple[np.ndarray, np.ndarray, np.ndarray], options: DistillOptions, progress: Progress,
            desc: str, train_tokens: np.ndarray | None = None, labels_train: np.ndarray | None = None,
            labels_val: np.ndarray | None = None, train_states: dict[int, np.ndarray] | None = None
            ) -> DistillResult:
    """Train `student` in place on (ids, mask, teacher output) rows; keep its best epoch.

    `train_tokens` holds the teacher's last-layer token vectors of the training rows as
    `run.torch_hidden_and_outputs` returns them (float16, real tokens row after row). `labels_train`
    / `labels_val` (int64 label indices) are used by classifiers only. `train_states` maps a student
    hidden-state index k (1 = output of the student's first layer) to teacher token vectors laid out
    like `train_tokens` (e.g. from `run.torch_states_and_outputs`), each matched with weight
    `options.layer_weight`. See the module docstring for the losses and the validation score.
    """
    if task not in ("embedding", "classification"):
        raise ValueError(f"task {task!r}: embedding or classification")
    began = time.monotonic()
    seed_everything(options.seed)
    if options.threads:
        torch.set_num_threads(options.threads)
    ids, mask, targets = train
    lengths = mask.sum(axis=1).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if options.max_train is not None:
        n = options.max_train
        ids, mask, targets, lengths, starts = ids[:n], mask[:n], targets[:n], lengths[:n], starts[:n]
        labels_train = labels_train[:n] if labels_train is not None else None
    use_labels = task == "classification" and labels_train is not None
    val_labels = labels_val if task == "classification" else None
    use_tokens = train_tokens is not None and options.token_weight > 0
    states = {int(k): v for k, v in (train_states or {}).items() if options.layer_weight > 0}
    depth = len(layer_list(student))
    if any(not 1 <= k <= depth for k in states):
        raise ValueError(f"train_states keys {sorted(states)}: student hidden states are 1..{depth}")
    if any(not 0 <= index < depth for index in options.freeze_layers):
        raise ValueError(f"freeze_layers {options.freeze_layers}: the student has layers 0..{depth - 1}")
    bf16 = options.use_bf16()
    normalized = bool(getattr(student, "normalize", True))
    if options.freeze_embeddings:
        student.encoder.embeddings.requires_grad_(False)
    for index in options.freeze_layers:
        layer_list(student)[index].requires_grad_(False)
    trainable = [p for p in student.parameters() if p.requires_grad]
    order = torch.Generator().manual_seed(options.seed)
    steps_per_epoch = math.ceil(len(ids) / options.batch_size)
    total = steps_per_epoch * options.epochs
    warmup = max(1, int(total * options.warmup))
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        step / warmup if step < warmup else
        0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))))
    metric, start_score, tie = _validate(student, task, val, val_labels, options.temperature)
    best = (start_score, tie)
    best_epoch, best_state, epoch = 0, copy.deepcopy(student.state_dict()), 0
    ids_t, mask_t, targets_t = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(targets)
    labels_t = torch.from_numpy(np.asarray(labels_train, dtype=np.int64)) if use_labels else None
    deadline = time.monotonic() + options.max_seconds if options.max_seconds else None
    out_of_time = False
    try:
        with progress.bar(total, desc) as bar:
            for epoch in range(1, options.epochs + 1):
                student.train()
                for rows in _batches(lengths, options.batch_size, order):
                    r = rows.numpy()
                    width = max(int(lengths[r].max()), 1)
                    optimizer.zero_grad(set_to_none=True)
                    batch_mask = mask_t[rows, :width]
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        if states:
                            all_states, out = student.states_and_output(ids_t[rows, :width], batch_mask)
                            hidden = all_states[-1]
                        else:
                            hidden, out = student.hidden_and_output(ids_t[rows, :width], batch_mask)
                    hidden, out = hidden.float(), out.float()
                    if task == "embedding":
                        loss = _embedding_loss(out, targets_t[rows], normalized)
                    else:
                        kd = kd_loss(out, targets_t[rows], options.temperature)
                        loss = (options.alpha * kd + (1 - options.alpha) * F.cross_entropy(out, labels_t[rows])
                                if labels_t is not None else kd)
                    if use_tokens or states:
                        picked = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in r])
                        real = batch_mask.bool()
                    if use_tokens:
                        target_tokens = torch.from_numpy(train_tokens[picked].astype(np.float32))
                        loss = loss + options.token_weight * token_distillation_loss(hidden[real], target_tokens)
                    for k, target in states.items():
                        loss = loss + options.layer_weight * token_distillation_loss(
                            all_states[k].float()[real], torch.from_numpy(target[picked].astype(np.float32)))
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    bar.update()
                    if deadline is not None and time.monotonic() > deadline:
                        out_of_time = True
                        break
                _, value, tie = _validate(student, task, val, val_labels, options.temperature)
                progress.line(f"{desc}: epoch {epoch}{' (cut short: max_seconds)' if out_of_time else ''}, "
                              f"validation {metric} {value:.4f}")
                if (value, tie) > best:
                    best, best_epoch, best_state = (value, tie), epoch, copy.deepcopy(student.state_dict())
                elif epoch - best_epoch >= options.patience:
                    break
                if out_of_time:
                    break
    finally:
        student.load_state_dict(best_state)
        student.requires_grad_(True)
        student.eval()
    return DistillResult(epoch, best_epoch, round(best[0], 5), round(time.monotonic() - began, 1), metric,
                         round(start_score, 5))
