"""Latency cases and their timing: every variant interleaved run by run, with the server's session recipe.

Array models are timed at batch 1 and 32 on real held-out rows (`batch_1`, `batch_32`). Token models
are timed per sequence length (`batch_1` ≈16 tokens, what `auto` routing reads; `batch_1_long` 128;
`batch_32` 128; `batch_32_short` 16), each row real held-out text joined until it fills the length.
Interleaving spreads load from other processes on the machine over every variant alike.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelrepo.measure import TOKEN_MASK, Feeds, count, is_token_feeds, rows_per_run, run_in_slices, take
from modelrepo.session import open_session

__all__ = ["ARRAY_CASES", "TOKEN_CASES", "Case", "cases", "default_runs", "measure_latency"]

# Manifest key → (batch, tokens); tokens None for array models.
ARRAY_CASES: dict[str, tuple[int, int | None]] = {"batch_1": (1, None), "batch_32": (32, None)}
TOKEN_CASES: dict[str, tuple[int, int | None]] = {
    "batch_1": (1, 16), "batch_1_long": (1, 128), "batch_32": (32, 128), "batch_32_short": (32, 16)}
RUNS = {"batch_1": 200, "batch_32": 100}
TOKEN_RUNS = {"batch_1": 200, "batch_1_long": 60, "batch_32": 12, "batch_32_short": 60}

Case = tuple[int, int | None, list[dict[str, np.ndarray]]]
"""(batch, tokens, a few real feeds of that shape)."""


def default_runs(token_model: bool) -> dict[str, int]:
    """Timed runs per case (a token batch of 32 x 128 is slow: fewer runs)."""
    return dict(TOKEN_RUNS if token_model else RUNS)


def _token_rows(feeds: Feeds, batch: int, tokens: int) -> dict[str, np.ndarray]:
    """`batch` rows of exactly `tokens` real tokens: held-out rows' inner tokens joined, wrapped in
    the first row's start and end tokens ([CLS] … [SEP] or <s> … </s>), mask all ones."""
    ids, mask = feeds["input_ids"], feeds[TOKEN_MASK]
    lengths = mask.sum(axis=1)
    stream = np.concatenate([row[1:n - 1] for row, n in zip(ids, lengths, strict=True)])
    first, last = int(ids[0, 0]), int(ids[0, lengths[0] - 1])
    body = tokens - 2
    stream = np.resize(stream, max(len(stream), batch * body))  # a small set repeats its text
    rows = np.stack([np.concatenate([[first], stream[i * body:(i + 1) * body], [last]])
                     for i in range(batch)]).astype(ids.dtype)
    out = {"input_ids": rows, TOKEN_MASK: np.ones_like(rows)}
    for name in feeds:
        out.setdefault(name, np.zeros_like(rows))  # token_type_ids: one segment
    return out


def cases(heldout: Feeds, max_tokens: int | None = None) -> dict[str, Case]:
    """The latency cases for a model whose held-out inputs are `heldout`; token cases longer than
    the model's `max_tokens` (its tokenizer's maximum length) are cut to it."""
    if is_token_feeds(heldout) and "input_ids" in heldout:
        cap = max_tokens or 1 << 30
        return {key: (batch, min(tokens, cap), [_token_rows(heldout, batch, min(tokens, cap))])
                for key, (batch, tokens) in TOKEN_CASES.items() if tokens is not None}
    total = count(heldout)
    result: dict[str, Case] = {}
    for key, (batch, _) in ARRAY_CASES.items():
        # A few different real batches, wrapping around the held-out rows when they are few.
        result[key] = (batch, None, [take(heldout, (np.arange(batch) + i * batch) % total) for i in range(8)])
    return result


def measure_latency(paths: Mapping[str, Path], latency_cases: Mapping[str, Case],
                    runs: Mapping[str, int], threads: int = 1, cpu: str = "",
                    max_tokens_per_run: int = 0) -> dict[str, dict[str, Any]]:
    """p50/p95 ms per variant and case, variants interleaved within each run. With
    `max_tokens_per_run`, token batches run in slices of rows as the server runs them."""
    sessions = {name: open_session(path, threads) for name, path in paths.items()}
    result: dict[str, dict[str, Any]] = {name: {"threads": threads, "cpu": cpu} for name in paths}
    for case, (batch, tokens, feeds) in latency_cases.items():
        wanted = {name: [{i.name: f[i.name] for i in s.get_inputs()} for f in feeds]
                  for name, s in sessions.items()}
        rows = rows_per_run(feeds[0], max_tokens_per_run) if tokens else None
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for name, session in sessions.items():  # warm-up: first runs allocate and pick kernels
            for i in range(2 if batch > 1 and tokens else 10):
                run_in_slices(session, wanted[name][i % len(feeds)], rows)
        for i in range(runs[case]):
            for name, session in sessions.items():
                feed = wanted[name][i % len(feeds)]
                began = time.perf_counter()
                run_in_slices(session, feed, rows)
                times[name].append((time.perf_counter() - began) * 1e3)
        for name, t in times.items():
            p50, p95 = np.percentile(t, [50, 95])
            entry: dict[str, Any] = {"p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
                                     "runs": runs[case]}
            if tokens:
                entry["tokens"] = tokens
                if batch > 1:
                    entry["sentences_per_s"] = round(batch * 1e3 / float(p50), 1)
            if rows is not None:
                entry["rows_per_run"] = rows
            result[name][case] = entry
    return result
