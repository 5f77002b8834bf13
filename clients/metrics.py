"""Reads slimserve's Prometheus metrics endpoint into a snapshot that can be queried by name and labels."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Mapping

from prometheus_client.parser import text_string_to_metric_families

from clients.address import AddressError, parse_target
from clients.errors import MetricsError

__all__ = ["MetricsSnapshot", "fetch_metrics", "parse_metrics", "default_metrics_url"]


def default_metrics_url(grpc_url: str, port: int = 8002) -> str:
    """`host:8001` -> `http://host:8002/metrics` (Triton's default metrics port); keeps `[v6]` brackets.

    Of several replicas (or a `dns:` name) it is the first host's: one scrape reads one replica.
    """
    try:
        host = parse_target(grpc_url).addresses[0].host_text
    except AddressError:
        host = "127.0.0.1"
    return f"http://{host}:{port}/metrics"


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every sample of one scrape, keyed by sample name, then by its sorted label pairs."""

    samples: Mapping[str, Mapping[tuple[tuple[str, str], ...], float]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample named `name` whose labels include `labels`, summed if several match; None if none."""
        found = [v for key, v in self.samples.get(name, {}).items() if labels.items() <= dict(key).items()]
        return sum(found) if found else None

    def histogram(self, name: str, **labels: str) -> tuple[float, float] | None:
        """(sum, count) of histogram `name` (without the `_sum`/`_count` suffix), or None."""
        total, count = self.value(f"{name}_sum", **labels), self.value(f"{name}_count", **labels)
        if total is None or count is None:
            return None
        return total, count


def parse_metrics(text: str) -> MetricsSnapshot:
    """Parse Prometheus text exposition format."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = float(sample.value)
    return MetricsSnapshot(samples)


def fetch_metrics(url: str, timeout: float = 5.0) -> MetricsSnapshot:
    """Scrape `url`; raises `MetricsError` with the reason when it cannot be read or parsed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise MetricsError(url, f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise MetricsError(url, str(reason)) from None
    try:
        return parse_metrics(text)
    except ValueError as exc:
        raise MetricsError(url, f"not Prometheus text: {exc}") from None
