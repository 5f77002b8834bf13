"""Running a TextModel (PyTorch) or its ONNX export over token arrays, in length-sorted batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["onnx_outputs", "torch_hidden_and_outputs", "torch_outputs", "torch_states_and_outputs"]


@torch.no_grad()
def torch_outputs(model: nn.Module, ids: np.ndarray, mask: np.ndarray, batch: int = 128) -> np.ndarray:
    """The served outputs [n, width] of `model` (float32), in input order.

    Rows are run shortest first and each batch is trimmed to its longest row, so little is padding.
    """
    return _run(model, ids, mask, batch, with_tokens=False)[0]


@torch.no_grad()
def torch_hidden_and_outputs(model: nn.Module, ids: np.ndarray, mask: np.ndarray, batch: int = 128
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Outputs [n, width], and the last layer's vectors of the real tokens, row by row, as float16
    [sum of lengths, hidden] (row i's tokens start at `mask[:i].sum()`)."""
    return _run(model, ids, mask, batch, with_tokens=True)


@torch.no_grad()
def torch_states_and_outputs(model: nn.Module, ids: np.ndarray, mask: np.ndarray, layers: list[int],
                             batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Outputs [n, width], and the hidden states at `layers` (0 = embeddings, k = after layer k) of
    the real tokens, row by row, as float16 [len(layers), sum of lengths, hidden]."""
    return _run(model, ids, mask, batch, with_tokens=True, layers=list(layers))


def _run(model: nn.Module, ids: np.ndarray, mask: np.ndarray, batch: int, with_tokens: bool,
         layers: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    was_training = model.training
    model.eval()
    lengths = mask.sum(axis=1).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    tokens: np.ndarray | None = None
    try:
        for start in range(0, len(ids), batch):
            rows = order[start:start + batch]
            width = max(int(lengths[rows].max()), 1)
            args = torch.from_numpy(np.ascontiguousarray(ids[rows, :width])), \
                torch.from_numpy(np.ascontiguousarray(mask[rows, :width]))
            if with_tokens:
                if layers is None:
                    hidden, result = model.hidden_and_output(*args)
                    picked = hidden.unsqueeze(0)
                else:
                    states, result = model.states_and_output(*args)
                    picked = torch.stack([states[k] for k in layers])
                if tokens is None:
                    tokens = np.zeros((len(picked), int(lengths.sum()), picked.shape[-1]), np.float16)
                for j, row in enumerate(rows):
                    tokens[:, starts[row]:starts[row] + lengths[row]] = picked[:, j, :lengths[row]].float().numpy()
            else:
                result = model(*args)
            if out is None:
                out = np.zeros((len(ids), result.shape[1]), np.float32)
            out[rows] = result.float().numpy()
    finally:
        model.train(was_training)
    if out is None:
        raise ValueError("no rows to run")
    if tokens is None:
        tokens = np.zeros((1 if layers is None else len(layers), 0, 0), np.float16)
    return out, tokens[0] if layers is None else tokens


def onnx_outputs(session_or_path: object, ids: np.ndarray, mask: np.ndarray, batch: int = 64,
                 threads: int = 1) -> np.ndarray:
    """The first output of an ONNX Runtime session (or of the model file at a path) over all rows,
    shortest first with batches trimmed to their longest row, in input order."""
    sess = session_or_path
    if isinstance(session_or_path, (str, Path)):
        from modelrepo.session import open_session  # the server's session options

        sess = open_session(Path(session_or_path), threads)
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(ids), batch):
        rows = order[start:start + batch]
        width = max(int(lengths[rows].max()), 1)
        part = sess.run(None, {"input_ids": np.ascontiguousarray(ids[rows, :width]),  # type: ignore[attr-defined]
                               "attention_mask": np.ascontiguousarray(mask[rows, :width])})[0]
        if out is None:
            out = np.zeros((len(ids), part.shape[1]), np.float32)
        out[rows] = part
    if out is None:
        raise ValueError("no rows to run")
    return out
