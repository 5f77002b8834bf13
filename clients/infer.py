"""The `infer` command: send one request and print the outputs, the top class, and the variant that served it."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np

from clients.client import Client
from clients.errors import DataError
from clients.inputs import load_dataset, npy_inputs, random_inputs, text_inputs
from clients.model import ModelInfo, Prediction

__all__ = ["run_infer", "choose_inputs", "format_prediction", "softmax"]

MAX_ROWS_SHOWN = 20


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def choose_inputs(
    model: ModelInfo, npy: Path | None, npz: Path | None, row: int | None, seed: int | None = None,
    texts: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """The request's inputs: strings, a .npy file, one row of an .npz (all rows when `row` is None), or random."""
    if texts:
        return text_inputs(model, texts)
    if npy is not None:
        return npy_inputs(model, npy)
    if npz is not None:
        data = load_dataset(model, npz)
        if row is None:
            return data.take(0, data.rows)
        if not -data.rows <= row < data.rows:
            raise DataError(f"{npz}: --row {row} is out of range; it has {data.rows} rows")
        row %= data.rows
        return data.take(row, row + 1)
    return random_inputs(model, batch=1, seed=seed)


def format_prediction(model: ModelInfo, prediction: Prediction) -> str:
    """Each output's datatype, shape and values; for a classifier also each row's top class and probability."""
    lines = [f"model {prediction.model}, served by variant {prediction.variant or '(unnamed)'}"]
    by_name = {t.name: t for t in model.outputs}
    for name, array in prediction.outputs.items():
        info = by_name.get(name)
        datatype = info.datatype if info else str(array.dtype)
        lines.append(f"output {name} {datatype} {list(array.shape)}:")
        with np.printoptions(precision=6, floatmode="fixed", suppress=True, threshold=1000, linewidth=120):
            lines.append(str(array))
        if info is not None and model.is_classifier(info) and array.ndim == 2 and array.shape[0] > 0:
            probabilities = softmax(array)
            top = probabilities.argmax(axis=1)
            for r in range(min(array.shape[0], MAX_ROWS_SHOWN)):
                lines.append(f"row {r}: top class {int(top[r])}, probability {probabilities[r, top[r]]:.4f}")
            if array.shape[0] > MAX_ROWS_SHOWN:
                lines.append(f"... {array.shape[0] - MAX_ROWS_SHOWN} more rows")
    return "\n".join(lines)


def run_infer(
    client: Client,
    model: str,
    variant: str,
    out: TextIO,
    npy: Path | None = None,
    npz: Path | None = None,
    row: int | None = None,
    seed: int | None = None,
    texts: list[str] | None = None,
) -> int:
    """Send one request and print what came back; returns the exit status."""
    info = client.model(model, variant)
    inputs = choose_inputs(info, npy, npz, row, seed, texts)
    prediction = client.infer(model, inputs, variant=variant)
    print(format_prediction(info, prediction), file=out)
    return 0
