"""Tiny teachers in every format `compression.build --teacher` accepts, and data in every format
`--data` accepts, written into a folder for the tests (a few seconds to make)."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import numpy as np

MODULE = "tinymodels"

SOURCE = '''
"""Factories for the compression tests (written by tests/tiny_teachers.py)."""
import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 48)
        self.proj = nn.Linear(48, 16)

    def forward(self, x):
        return self.proj(torch.tanh(self.fc1(x)))


class TwoInput(nn.Module):
    """Two named inputs (left and right half of a digit), merged after one layer each."""
    def __init__(self, hidden=48):
        super().__init__()
        self.left = nn.Linear(32, hidden)
        self.right = nn.Linear(32, hidden)
        self.fc = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 10)

    def forward(self, x1, x2):
        h = torch.relu(self.left(x1) + self.right(x2))
        return self.out(torch.relu(self.fc(h)))


def make_mlp():
    return MLP()


def make_embedder():
    return Embedder()


def small_student():
    return MLP(16)


def wrong_student():
    return nn.Linear(64, 3)


def digits(rows=600):
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.data[:rows] / 16).astype(np.float32), d.target[:rows].astype(np.int64)


class Images(torch.utils.data.Dataset):
    """(1x8x8 image, label) pairs."""
    def __init__(self):
        x, y = digits()
        self.x, self.y = x.reshape(-1, 1, 8, 8), y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


class Unlabelled(torch.utils.data.Dataset):
    """Rows of 64 values, no labels."""
    def __init__(self):
        self.x = digits()[0]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def images():
    return Images()


def unlabelled():
    return Unlabelled()


def broken():
    raise RuntimeError("no data today")
'''


def _fit(module, x: np.ndarray, y: np.ndarray, epochs: int):
    import torch
    from torch.nn import functional as F

    torch.manual_seed(0)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    xs = tuple(torch.from_numpy(a) for a in (x if isinstance(x, tuple) else (x,)))
    yt = torch.from_numpy(y)
    module.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(module(*xs), yt).backward()
        optimizer.step()
    return module.eval()


def write_tiny_teachers(root: Path) -> Path:
    """Write the module, teachers and data under `root`; return `root` (put it on sys.path)."""
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)  # small models train ~5x faster on one thread than on two here
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{MODULE}.py").write_text(SOURCE)
    sys.path.insert(0, str(root))
    try:
        tiny = importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(0)
    x, y = tiny.digits()
    images = x.reshape(-1, 1, 8, 8)
    np.savez(root / "digits.npz", x=x, y=y)
    np.savez(root / "digits_unlabelled.npz", x=x)
    np.savez(root / "images.npz", x=images, y=y)
    np.savez(root / "narrow.npz", x=x[:, :32], y=y)
    np.savez(root / "no_x.npz", y=y)  # labels only: no input arrays
    (root / "garbage.pt").write_bytes(b"not a model")
    (root / "garbage.npz").write_bytes(b"not an archive")

    mlp = _fit(tiny.MLP(), x, y, 60)
    save_file(mlp.state_dict(), str(root / "mlp.safetensors"))
    torch.save(mlp.state_dict(), root / "mlp.pth")
    torch.save({"fc1.weight": torch.zeros(3, 3)}, root / "wrong.pth")
    torch.jit.script(mlp).save(str(root / "mlp.pt"))
    np.savez(root / "two.npz", x1=x[:, :32], x2=x[:, 32:], y=y)
    torch.jit.script(_fit(tiny.TwoInput(), (x[:, :32], x[:, 32:]), y, 60)).save(str(root / "two.pt"))
    cnn = _fit(tiny.CNN(), images, y, 40)
    example = torch.from_numpy(images[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(cnn, example).save(str(root / "cnn.ts"))
        program = torch.export.export(cnn, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(root / "cnn.pt2"))
        torch.jit.script(tiny.Embedder().eval()).save(str(root / "embedder.pt"))
        # An ONNX file with its weights in a side file, as big exports come.
        torch.onnx.export(mlp, (torch.from_numpy(x[:2]),), str(root / "mlp.onnx"), dynamo=True,
                          input_names=["pixels"], output_names=["scores"], verbose=False,
                          dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), external_data=True)
    return root
