"""What the manifest records per variant: fidelity to the teacher, latency, parameters, MACs.

Quality, on held-out sentences, against the teacher's embeddings:

    cosine_mean, cosine_min     mean and worst cos(variant(s), teacher(s)) over sentences s
    neighbour_agreement         share of sentences whose nearest other held-out sentence (by cosine)
                                is the same for the variant as for the teacher

Latency is measured with the server's session options (1 intra-op and 1 inter-op thread, sequential,
all graph optimisations), all variants interleaved run by run so that load from other processes on
this machine falls on every variant alike.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from compression.evaluate import session  # the server's session options, 1 thread unless told
from compression.host import cpu_model
from server.runtime import rows_per_run, run_in_slices

__all__ = ["DEFAULT_RUNS", "LATENCY_CASES", "THREADS", "embed", "encoder_macs", "latency_feeds",
           "measure_latency", "quality", "session"]

THREADS = 1
# Manifest key → (batch, tokens). `batch_1` is what routing compares (server/router.py).
LATENCY_CASES: dict[str, tuple[int, int]] = {
    "batch_1": (1, 16), "batch_1_long": (1, 128), "batch_32": (32, 128), "batch_32_short": (32, 16)}
DEFAULT_RUNS = {"batch_1": 200, "batch_1_long": 60, "batch_32": 12, "batch_32_short": 60}


def embed(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray, batch: int = 64) -> np.ndarray:
    """Run `sess` over all rows (shortest first, batches trimmed to their longest row), input order."""
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(ids), batch):
        rows = order[start:start + batch]
        width = max(int(lengths[rows].max()), 1)
        part = sess.run(None, {"input_ids": ids[rows, :width], "attention_mask": mask[rows, :width]})[0]
        if out is None:
            out = np.zeros((len(ids), part.shape[1]), np.float32)
        out[rows] = part
    assert out is not None, "no rows to embed"
    return out


def _nearest(emb: np.ndarray) -> np.ndarray:
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(axis=1)


def quality(emb: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """cosine_mean, cosine_min and neighbour_agreement of `emb` against `teacher` (rows aligned)."""
    a = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    b = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
            "neighbour_agreement": round(float((_nearest(a) == _nearest(b)).mean()), 5)}


def latency_feeds(ids: np.ndarray, mask: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Inputs per latency case, built from real held-out sentences: rows are consecutive sentences
    joined (in [CLS] … [SEP] form) until they fill `tokens`, so each row is full-length real text (repeated when the set is small)."""
    stream = np.concatenate([row[1:m.sum() - 1] for row, m in zip(ids, mask)])  # drop [CLS]/[SEP]
    cls, sep = int(ids[0, 0]), int(ids[0, mask[0].sum() - 1])
    feeds = {}
    for key, (batch, tokens) in LATENCY_CASES.items():
        body = tokens - 2
        stream = np.resize(stream, max(len(stream), batch * body))  # a small set repeats its text
        rows = [np.concatenate([[cls], stream[i * body:(i + 1) * body], [sep]]) for i in range(batch)]
        arr = np.stack(rows).astype(np.int64)
        feeds[key] = {"input_ids": arr, "attention_mask": np.ones_like(arr)}
    return feeds


def measure_latency(paths: Mapping[str, Path], feeds: Mapping[str, Mapping[str, np.ndarray]],
                    runs: Mapping[str, int] | None = None, threads: int = THREADS,
                    max_tokens_per_run: int = 0) -> dict[str, dict[str, Any]]:
    """p50/p95 ms per variant and case, interleaving variants within each run. With
    `max_tokens_per_run`, batches run in slices of rows as the server runs them (server.runtime)."""
    runs = {**DEFAULT_RUNS, **(runs or {})}
    sessions = {name: session(path, threads) for name, path in paths.items()}
    result: dict[str, dict[str, Any]] = {name: {"threads": threads, "cpu": cpu_model()} for name in paths}
    for case, feed in feeds.items():
        batch, tokens = LATENCY_CASES[case]
        rows = rows_per_run(feed, max_tokens_per_run)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for sess in sessions.values():  # warm-up: first runs allocate and pick kernels
            for _ in range(2 if batch > 1 else 10):
                run_in_slices(sess, feed, rows)
        for _ in range(runs[case]):
            for name, sess in sessions.items():
                began = time.perf_counter()
                run_in_slices(sess, feed, rows)
                times[name].append((time.perf_counter() - began) * 1e3)
        for name, t in times.items():
            p50, p95 = np.percentile(t, [50, 95])
            entry = {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
                     "runs": runs[case], "tokens": tokens}
            if rows is not None:
                entry["rows_per_run"] = rows
            if batch > 1:
                entry["sentences_per_s"] = round(batch * 1e3 / float(p50), 1)
            result[name][case] = entry
    return result


def encoder_macs(layers: list[tuple[int, int]], hidden: int = 384, head_dim: int = 32,
                 tokens: int = 128) -> int:
    """Multiply-accumulates per sentence of `tokens` tokens for a BERT encoder.

    `layers` holds (heads, ffn width) per layer. Per layer, with a = heads·head_dim:
    projections T·(3·H·a + a·H), attention scores and mixing 2·T²·a, FFN 2·T·H·F.
    Embedding lookups, layer norms and pooling are not multiply-accumulates of note.
    """
    total = 0
    for heads, ffn in layers:
        attn = heads * head_dim
        total += tokens * (4 * hidden * attn) + 2 * tokens * tokens * attn + 2 * tokens * hidden * ffn
    return total
