"""The `compare` command: the same held-out inputs through every variant, quality and cost side by side."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from clients.client import Client
from clients.errors import DataError, MetricsError
from clients.inputs import Dataset, load_dataset
from clients.metrics import MetricsSnapshot, fetch_metrics
from clients.model import ModelInfo
from clients.report import fmt, percentiles, table

__all__ = ["VariantResult", "compare_variants", "run_compare", "default_data_path"]

MIB = 1024 * 1024


def default_data_path(model: str) -> Path:
    """Where `compression.build` leaves the held-out split: `./model_repository/<model>/heldout.txt` for
    text models (sent as strings, tokenized by the server), else `heldout.npz`."""
    folder = Path("model_repository") / model
    text = folder / "heldout.txt"
    return text if text.is_file() else folder / "heldout.npz"


@dataclass
class VariantResult:
    """What one variant did with the data; quality is None where it does not apply."""

    variant: str
    requests: int
    served_by: set[str]
    outputs: np.ndarray
    latencies_ms: list[float]
    accuracy: float | None = None
    agreement: float | None = None
    cosine: float | None = None
    compute_ms: float | None = None
    memory_bytes: float | None = None


def _labels(y: np.ndarray) -> np.ndarray:
    """Class indices from integer labels or one-hot rows."""
    return y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64).reshape(-1)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine similarity of two output batches."""
    a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return float(np.mean(np.sum(a2 * b2, axis=1) / np.maximum(norms, 1e-12)))


def _scrape(url: str | None) -> MetricsSnapshot | None:
    return fetch_metrics(url) if url else None


def _run_variant(client: Client, model: str, variant: str, data: Dataset, rows: int, batch: int, output: str) -> VariantResult:
    latencies: list[float] = []
    chunks: list[np.ndarray] = []
    served: set[str] = set()
    for start in range(0, rows, batch):
        inputs = data.take(start, min(start + batch, rows))
        began = time.perf_counter()
        prediction = client.infer(model, inputs, variant=variant, outputs=[output])
        latencies.append((time.perf_counter() - began) * 1000)
        served.add(prediction.variant)
        chunks.append(prediction.outputs[output])
    return VariantResult(variant, len(latencies), served, np.concatenate(chunks), latencies)


def compare_variants(
    client: Client,
    info: ModelInfo,
    data: Dataset,
    samples: int | None,
    batch: int,
    metrics_url: str | None,
) -> tuple[list[VariantResult], str | None]:
    """Run every variant (the teacher first); returns the results and why metrics are missing, if they are."""
    if not info.variants:
        raise DataError(f"model '{info.name}' reports no variants")
    rows = min(samples, data.rows) if samples else data.rows
    teacher = "teacher" if "teacher" in info.variants else info.variants[0]
    order = [teacher] + [v for v in info.variants if v != teacher]
    output = info.outputs[0].name
    classifier = info.is_classifier()
    metrics_problem: str | None = None
    results: list[VariantResult] = []
    for variant in order:
        # One untimed request first, so lazy set-up on either side is not counted (nor scraped).
        client.infer(info.name, data.take(0, min(batch, rows)), variant=variant, outputs=[output])
        before = after = None
        if metrics_problem is None:
            try:
                before = _scrape(metrics_url)
            except MetricsError as exc:
                metrics_problem = str(exc)
        result = _run_variant(client, info.name, variant, data, rows, batch, output)
        if before is not None:
            try:
                after = _scrape(metrics_url)
            except MetricsError as exc:
                metrics_problem = str(exc)
        if before is not None and after is not None:
            _server_side(result, info.name, before, after)
        results.append(result)
    reference = results[0].outputs
    for result in results:
        if classifier:
            top = result.outputs.argmax(axis=1)
            result.agreement = float(np.mean(top == reference.argmax(axis=1)))
            if data.labels is not None:
                result.accuracy = float(np.mean(top == _labels(data.labels[:rows])))
        else:
            result.cosine = _cosine(result.outputs, reference)
    return results, metrics_problem


def _server_side(result: VariantResult, model: str, before: MetricsSnapshot, after: MetricsSnapshot) -> None:
    """Mean compute time per request (from histogram sum/count deltas) and the variant's memory gauge."""
    labels = {"model": model, "variant": result.variant}
    a = after.histogram("slimserve_compute_duration_seconds", **labels)
    b = before.histogram("slimserve_compute_duration_seconds", **labels) or (0.0, 0.0)
    if a is not None and a[1] > b[1]:
        result.compute_ms = (a[0] - b[0]) / (a[1] - b[1]) * 1000
    result.memory_bytes = after.value("slimserve_variant_memory_bytes", **labels)


def run_compare(
    client: Client,
    model: str,
    data_path: Path | None,
    samples: int | None,
    batch: int,
    metrics_url: str | None,
    out: TextIO,
) -> int:
    """Print one row per variant; returns the exit status."""
    info = client.model(model)
    path = data_path or default_data_path(model)
    if not path.is_file():
        hint = "" if data_path else " (the default); pass --data FILE.npz"
        raise DataError(f"no data at {path}{hint}")
    data = load_dataset(info, path)
    results, metrics_problem = compare_variants(client, info, data, samples, batch, metrics_url)
    rows = min(samples, data.rows) if samples else data.rows
    classifier = info.is_classifier()
    print(f"model {model}: {rows} rows of {path}, batch {batch}, {results[0].requests} requests per variant; "
          f"reference for agreement: {results[0].variant}", file=out)
    quality = ["accuracy", "agreement"] if classifier else ["cosine"]
    headers = ["variant", *quality, "p50 ms", "p95 ms", "server compute ms", "memory MiB"]
    body = []
    for r in results:
        p50, p95 = percentiles(r.latencies_ms, (50, 95))
        cells = [r.variant]
        cells += [fmt(r.accuracy), fmt(r.agreement)] if classifier else [fmt(r.cosine, 4)]
        cells += [fmt(p50), fmt(p95)]
        if metrics_problem is not None and r.compute_ms is None:
            cells += ["metrics unreachable", "metrics unreachable"]
        else:
            cells += [fmt(r.compute_ms), fmt(None if r.memory_bytes is None else r.memory_bytes / MIB, 2)]
        body.append(cells)
    print(table(headers, body), file=out)
    print("client latency: per request, end to end in this process; server compute: mean ONNX Runtime time "
          "per request from slimserve_compute_duration_seconds; memory: slimserve_variant_memory_bytes", file=out)
    if metrics_problem is not None:
        print(f"note: {metrics_problem}", file=out)
    for r in results:
        if r.served_by - {r.variant}:
            print(f"note: requests for variant {r.variant} were answered by {sorted(r.served_by)}", file=out)
    return 0
