"""Several training processes under `torchrun` (DDP, gloo backend on CPU).

`torchrun --nproc-per-node N -m compression.build ...` starts N copies of the build. Each runs
the same steps in the same order; the training loops shard every epoch with a DistributedSampler
and all-reduce gradients (DistributedDataParallel), so all copies hold the same weights after each
step. Rank 0 alone writes the repository, quantizes, measures and reports; the other ranks only
train and leave when no training step is left.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist

__all__ = ["describe", "finish", "is_main", "rank", "start", "world_size"]

BACKEND = "gloo"


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def start() -> bool:
    """Join the process group when launched by torchrun with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(BACKEND, timeout=timedelta(minutes=30))
    return True


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def describe() -> dict[str, object]:
    """How training ran, for recipes."""
    return {"processes": world_size(), "backend": BACKEND if world_size() > 1 else None}
