"""Running a model over named arrays, and the quality the manifest records per task.

Quality on held-out rows, against the teacher's outputs on the same rows:

    classification   accuracy (vs. labels, when there are labels), agreement (top-1 with the teacher)
    embedding        cosine_mean, cosine_min (per-row cosine to the teacher), neighbour_agreement
                     (share of rows whose nearest other row by cosine is the same as the teacher's)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

__all__ = ["Feeds", "TOKEN_MASK", "classification_quality", "count", "embedding_quality", "is_token_feeds",
           "quality", "rows_per_run", "run", "run_in_slices", "take"]

Feeds = Mapping[str, np.ndarray]
"""A model's inputs by name, rows along axis 0 (the same rows in every array)."""

TOKEN_MASK = "attention_mask"


def count(feeds: Feeds) -> int:
    """Rows in `feeds`."""
    return len(next(iter(feeds.values())))


def take(feeds: Feeds, rows: np.ndarray | slice) -> dict[str, np.ndarray]:
    """The same rows of every array."""
    return {name: array[rows] for name, array in feeds.items()}


def is_token_feeds(feeds: Feeds) -> bool:
    """Token inputs: an `attention_mask` and every array [rows, sequence] of integers."""
    return TOKEN_MASK in feeds and all(a.ndim == 2 and a.dtype.kind in "iu" for a in feeds.values())


def rows_per_run(feeds: Feeds, max_tokens_per_run: int) -> int | None:
    """How many rows of a [batch, sequence] batch to run at once so one run holds at most
    `max_tokens_per_run` tokens (at least one row); None when the batch fits or the budget is 0.

    Why: a transformer's activations grow with batch x sequence; past about a thousand tokens they
    leave the CPU caches and every row gets slower (measured, MiniLM int8 at 128 tokens: 10.0 ms per
    row at batch 32, 7.4 at batch 8, 8.4 at batch 1; benchmarks/minilm_inprocess.py prints batch 32
    both ways)."""
    if max_tokens_per_run <= 0:
        return None
    batch, tokens = next(iter(feeds.values())).shape[:2]
    if batch * tokens <= max_tokens_per_run or batch == 1:
        return None
    return max(1, max_tokens_per_run // max(tokens, 1))


def run_in_slices(session: ort.InferenceSession, feeds: Feeds, rows: int | None,
                  outputs: list[str] | None = None) -> list[np.ndarray]:
    """`session.run` on all of `feeds`, or on `rows` rows at a time with the outputs concatenated."""
    if rows is None:
        return session.run(outputs, dict(feeds))
    batch = count(feeds)
    parts = [session.run(outputs, take(feeds, slice(i, i + rows))) for i in range(0, batch, rows)]
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def run(session: ort.InferenceSession, feeds: Feeds, batch_size: int = 64) -> np.ndarray:
    """The session's first output for every row of `feeds`, in row order.

    Token inputs run shortest row first, each batch cut to its longest row, so little is padding
    (the outputs of masked padding are what the unpadded row gives, up to float rounding).
    """
    total = count(feeds)
    if total == 0:
        raise ValueError("no rows to run")
    wanted = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in wanted}
    if is_token_feeds(feeds):
        lengths = feeds[TOKEN_MASK].sum(axis=1)
        order = np.argsort(lengths, kind="stable")
    else:
        lengths, order = None, np.arange(total)
    out: np.ndarray | None = None
    for start in range(0, total, batch_size):
        rows = order[start:start + batch_size]
        part_feeds = take(feeds, rows)
        if lengths is not None:
            width = max(int(lengths[rows].max()), 1)
            part_feeds = {k: v[:, :width] for k, v in part_feeds.items()}
        part = session.run(None, part_feeds)[0]
        if out is None:
            out = np.zeros((total, *part.shape[1:]), part.dtype)
        out[rows] = part
    assert out is not None
    return out


def classification_quality(logits: np.ndarray, labels: np.ndarray | None,
                           teacher_top1: np.ndarray) -> dict[str, float]:
    """`accuracy` against the labels (when there are labels) and top-1 `agreement` with the teacher."""
    top1 = logits.argmax(axis=1)
    result = {"agreement": round(float((top1 == teacher_top1).mean()), 6)}
    if labels is not None:
        result = {"accuracy": round(float((top1 == labels).mean()), 6), **result}
    return result


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.reshape(len(rows), -1).astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def embedding_quality(out: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """`cosine_mean`, `cosine_min` and `neighbour_agreement` of `out` against `teacher` (rows aligned)."""
    a, b = _unit(out), _unit(teacher)
    cos = (a * b).sum(axis=1)

    def nearest(e: np.ndarray) -> np.ndarray:
        sims = e @ e.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(axis=1)

    return {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
            "neighbour_agreement": round(float((nearest(a) == nearest(b)).mean()), 6)}


def quality(task: str, out: np.ndarray, labels: np.ndarray | None, teacher: np.ndarray) -> dict[str, float]:
    """The manifest's quality record of a variant's outputs on held-out rows."""
    if task == "classification":
        return classification_quality(out, labels, teacher.argmax(axis=1))
    return embedding_quality(out, teacher)
