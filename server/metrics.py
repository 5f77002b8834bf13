"""Prometheus metrics (SPEC §4): per-variant histograms and counters, gauges read at scrape time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.shadow import LiveRow

__all__ = ["Metrics", "VariantMetrics", "VariantFacts"]

# Latency buckets from 50 µs to 10 s: small models answer in well under a millisecond.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# `_created` series double the scrape size and no dashboard of ours reads them.
disable_created_metrics()


@dataclass(frozen=True)
class VariantFacts:
    """Static facts of a loaded variant, exported as gauges."""

    model: str
    variant: str
    memory_bytes: int
    file_bytes: int
    parameters: int
    quality: dict[str, float]
    queue_depth: int = 0
    runs_in_progress: int = 0


class VariantMetrics:
    """Pre-labelled children for one model/variant, so the hot path does no label lookups."""

    def __init__(self, metrics: "Metrics", model: str, variant: str) -> None:
        self.request = metrics.request_duration.labels(model, variant)
        self.queue = metrics.queue_duration.labels(model, variant)
        self.compute = metrics.compute_duration.labels(model, variant)
        self.batch = metrics.batch_size.labels(model, variant)
        self._requests = metrics.requests_total
        self._model = model
        self._variant = variant
        self._ok = metrics.requests_total.labels(model, variant, "OK")

    def count(self, code: str) -> None:
        if code == "OK":
            self._ok.inc()
        else:
            self._requests.labels(self._model, self._variant, code).inc()


class _VariantCollector(Collector):
    """Reads the current variant facts at scrape time (variants come and go with reloads)."""

    def __init__(
        self,
        facts: Callable[[], Iterable[VariantFacts]],
        shadow: Callable[[], Iterable[LiveRow]],
        unavailable: dict[str, dict[str, str]],
    ) -> None:
        self._facts = facts
        self._shadow = shadow
        self._unavailable = unavailable

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "variant"]
        memory = GaugeMetricFamily(
            "slimserve_variant_memory_bytes", "Resident memory the loaded variant holds (measured at load, in a fresh process)", labels=labels
        )
        file_bytes = GaugeMetricFamily("slimserve_variant_file_bytes", "Size of the variant's ONNX file", labels=labels)
        params = GaugeMetricFamily("slimserve_variant_parameters", "Parameter count of the variant", labels=labels)
        quality = GaugeMetricFamily(
            "slimserve_variant_quality",
            "Quality measured on held-out data at build time (from the manifest)",
            labels=["model", "variant", "metric"],
        )
        available = GaugeMetricFamily(
            "slimserve_variant_available",
            "1 while the variant serves, 0 when its file failed to load (the log and RepositoryIndex say why)",
            labels=labels,
        )
        for model, variants in sorted(self._unavailable.items()):
            for variant in sorted(variants):
                available.add_metric([model, variant], 0)
        depth = GaugeMetricFamily(
            "slimserve_queue_depth", "Requests waiting for a run of the variant (Triton's pending request count)",
            labels=labels,
        )
        running = GaugeMetricFamily(
            "slimserve_runs_in_progress", "ONNX Runtime runs of the variant in progress", labels=labels
        )
        for f in self._facts():
            available.add_metric([f.model, f.variant], 1)
            depth.add_metric([f.model, f.variant], f.queue_depth)
            running.add_metric([f.model, f.variant], f.runs_in_progress)
            memory.add_metric([f.model, f.variant], f.memory_bytes)
            file_bytes.add_metric([f.model, f.variant], f.file_bytes)
            params.add_metric([f.model, f.variant], f.parameters)
            for metric, value in sorted(f.quality.items()):
                quality.add_metric([f.model, f.variant, metric], value)
        return [available, depth, running, memory, file_bytes, params, quality, *self._live(labels)]

    def _live(self, labels: list[str]) -> list[Metric]:
        window = "over the last 2 x routing.min_samples compared rows"
        mean = GaugeMetricFamily(
            "slimserve_shadow_agreement",
            f"Agreement of the variant with the teacher on mirrored live traffic (top-1 match rate; mean cosine "
            f"for embeddings), {window}",
            labels=labels,
        )
        lower = GaugeMetricFamily("slimserve_shadow_agreement_lower",
                                  f"Lower bound of the 95% interval of slimserve_shadow_agreement, {window}", labels=labels)
        upper = GaugeMetricFamily("slimserve_shadow_agreement_upper",
                                  f"Upper bound of the 95% interval of slimserve_shadow_agreement, {window}", labels=labels)
        compared = CounterMetricFamily("slimserve_shadow_compared", "Rows compared with the teacher", labels=labels)
        agreeing = CounterMetricFamily(
            "slimserve_shadow_agreeing", "Rows agreeing with the teacher's top-1 (embeddings: sum of cosines)",
            labels=labels,
        )
        for row in self._shadow():
            key = [row.model, row.variant]
            mean.add_metric(key, row.window.mean)
            lower.add_metric(key, row.window.lower)
            upper.add_metric(key, row.window.upper)
            compared.add_metric(key, row.compared_total)
            agreeing.add_metric(key, row.agreeing_total)
        return [mean, lower, upper, compared, agreeing]


class Metrics:
    """All of slimserve's metrics, built against one (injectable) registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["model", "variant"]
        self.request_duration = Histogram(
            "slimserve_request_duration_seconds",
            "End-to-end time of an inference request inside the server",
            labels, registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self.queue_duration = Histogram(
            "slimserve_queue_duration_seconds",
            "Time a request waited before its ONNX Runtime run started",
            labels, registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self.compute_duration = Histogram(
            "slimserve_compute_duration_seconds",
            "Time of the ONNX Runtime run that served the request",
            labels, registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "slimserve_batch_size", "Rows in each ONNX Runtime run", labels, registry=self.registry,
            buckets=BATCH_BUCKETS,
        )
        self.requests_total = Counter(
            "slimserve_requests", "Inference requests by outcome (gRPC status code name)",
            ["model", "variant", "code"], registry=self.registry,
        )
        # Labelled by both ends of the change: at most variants² series per model.
        self.routing_changes = Counter(
            "slimserve_routing_changes", "Changes of the variant `auto` routing sends traffic to, on live quality",
            ["model", "from_variant", "to_variant"], registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self._children: dict[tuple[str, str], VariantMetrics] = {}
        self._unavailable: dict[str, dict[str, str]] = {}  # model -> {variant: reason}

    def set_unavailable(self, model: str, variants: dict[str, str]) -> None:
        """Record which variants of a model failed to load (an empty dict clears the model)."""
        if variants:
            self._unavailable[model] = dict(variants)
        else:
            self._unavailable.pop(model, None)

    def variant(self, model: str, variant: str) -> VariantMetrics:
        key = (model, variant)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = VariantMetrics(self, model, variant)
        return child

    def count(self, model: str, variant: str, code: str) -> None:
        """Count a request that never reached a variant (unknown model or variant)."""
        self.requests_total.labels(model, variant, code).inc()

    def add_gauges(
        self,
        facts: Callable[[], Iterable[VariantFacts]],
        shadow: Callable[[], Iterable[LiveRow]] = lambda: (),
    ) -> None:
        self.registry.register(_VariantCollector(facts, shadow, self._unavailable))
