"""Training on several processes with torchrun (DDP, gloo on CPU): two processes, small and fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

FACTORY = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
'''

# One `fit` under DDP; every rank saves its weights and the training rows it was given.
SCRIPT = '''
import sys
import numpy as np
import torch
from torch import nn
from compression import distributed
from compression.data import load_data
from compression.progress import Progress
from compression.train import TrainOptions, _epoch_rows, fit

distributed.start()
rank, world = distributed.rank(), distributed.world_size()
splits = load_data("digits", 0)
torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
options = TrainOptions(epochs=2, batch_size=64, seed=0)
rows = torch.cat(_epoch_rows(len(splits.x_train["x"]), 1, options, torch.Generator())).numpy()
fit(model, splits, options, Progress(quiet=True), "ddp")
weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
np.savez(f"{sys.argv[1]}/rank{rank}.npz", weights=weights, rows=rows, world=world)
distributed.finish()
'''


def torchrun(*args: str, cwd: Path, extra_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(extra_path)])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ddp_shards_rows_and_keeps_ranks_in_step(tmp_path: Path) -> None:
    (tmp_path / "ddp_fit.py").write_text(SCRIPT)
    done = torchrun(str(tmp_path / "ddp_fit.py"), str(tmp_path), cwd=ROOT, extra_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert int(r0["world"]) == int(r1["world"]) == 2
    # DistributedSampler: each rank sees half the epoch, together all 1077 training rows.
    assert len(set(r0["rows"]) & set(r1["rows"])) <= 1  # 1077 is odd: one row pads the shorter shard
    assert set(r0["rows"]) | set(r1["rows"]) == set(range(1077))
    assert abs(len(r0["rows"]) - 1077 / 2) <= 1
    # All-reduced gradients from a common start: identical weights on both ranks.
    np.testing.assert_array_equal(r0["weights"], r1["weights"])


def test_torchrun_build_rank_0_writes_the_repository(tmp_path: Path) -> None:
    (tmp_path / "ddp_factory.py").write_text(FACTORY)
    out = tmp_path / "repo"
    done = torchrun("-m", "compression.build", "--out", str(out), "--teacher", "ddp_factory:make",
                    "--data", "digits", "--name", "ddp", "--variants", "distilled,pruned+int8",
                    "--distill-epochs", "3", "--prune-finetune-epochs", "2", "--quiet",
                    cwd=tmp_path, extra_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("manifest.json") == 1  # one table, from rank 0
    assert [p.name for p in out.iterdir()] == ["ddp"]  # no second staging folder
    manifest = json.loads((out / "ddp" / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"teacher", "distilled", "pruned", "pruned+int8"}
    for name in ("distilled", "pruned"):
        params = manifest["variants"][name]["recipe"]["params"]
        training = params if name == "distilled" else params["recovery"]
        assert training["processes"] == 2 and training["backend"] == "gloo"
    assert not list(tmp_path.glob("slimserve-rank-*"))
