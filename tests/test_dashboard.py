"""The Grafana dashboard (deploy/base/dashboards/slimserve.json): valid for Grafana, and every metric it queries is
one a real server exports, with the labels the queries filter and group by."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, start_server
from tiny_repository import FEATURES, write_tiny_repository
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "base" / "dashboards" / "slimserve.json"

# PromQL functions and aggregation operators (Prometheus 2.x/3.x): a name followed by "(".
FUNCTIONS = frozenset("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max clamp_min
cos cosh count_over_time days_in_month day_of_month day_of_week day_of_year deg delta deriv exp floor
histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum
holt_winters double_exponential_smoothing hour idelta increase irate label_join label_replace last_over_time ln
log10 log2 mad_over_time max_over_time min_over_time minute month predict_linear present_over_time
quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label sort_by_label_desc sort_desc sqrt
stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year
sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
""".split())
# Keywords that are never series: binary set operators, modifiers, literals.
KEYWORDS = frozenset("and or unless by without on ignoring group_left group_right bool offset atan2 inf nan".split())
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"})
# Labels Prometheus adds when it scrapes (not in /metrics itself).
TARGET_LABELS = frozenset({"instance", "job"})
# Every panel the issue asks for reads one of these (histograms through their series).
REQUIRED = {
    "slimserve_requests_total", "slimserve_request_duration_seconds_bucket", "slimserve_queue_duration_seconds_bucket",
    "slimserve_variant_memory_bytes", "process_resident_memory_bytes", "slimserve_variant_file_bytes",
    "slimserve_variant_quality", "slimserve_shadow_agreement", "slimserve_queue_depth", "slimserve_runs_in_progress",
    "slimserve_variant_available",
}


class Query:
    """What one PromQL expression reads: series names, label names per selector, grouping labels."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        text = STRINGS.sub('""', expr)  # label values ("OK", "$model") are never names
        self.matchers: list[tuple[str, set[str]]] = [
            (m.group(1), set(MATCHER_LABEL.findall(m.group(2)))) for m in SELECTOR.finditer(text)
            if m.group(1).lower() not in KEYWORDS
        ]
        text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
        text = re.sub(r"\[[^\[\]]*\]", " ", text)  # range and subquery durations, [$__rate_interval]
        self.grouping = {label.strip() for g in GROUPING.findall(text) for label in g.split(",") if label.strip()}
        text = GROUPING.sub(" ", text)
        self.metrics: set[str] = set()
        self.unknown_functions: set[str] = set()
        for m in IDENT.finditer(text):
            name = m.group(1)
            if name.lower() in KEYWORDS:
                continue
            if text[m.end():].lstrip().startswith("("):
                if name not in FUNCTIONS:
                    self.unknown_functions.add(name)
                continue
            self.metrics.add(name)


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, those inside collapsed rows too."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries(dashboard: dict) -> Iterator[tuple[dict, dict]]:
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel, target


def test_tokenizer_finds_series_not_functions_labels_or_values() -> None:
    q = Query('sum by (variant, le) (rate(foo_bucket{model="$model", code!="bar_total"}[$__rate_interval])) '
              '/ on (instance) group_left (pod) bar:ratio and max(baz offset 5m) > 1e3 * scalar(vector(2))')
    assert q.metrics == {"foo_bucket", "bar:ratio", "baz"}
    assert q.grouping == {"variant", "le", "instance", "pod"}
    assert q.matchers == [("foo_bucket", {"model", "code"})]
    assert Query("histogram_quantlie(0.5, x)").unknown_functions == {"histogram_quantlie"}


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = _dashboard()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]), dashboard.get("uid")
    assert dashboard["title"].strip()
    assert dashboard["schemaVersion"] >= 37  # Grafana 10.0 writes 38, 10.4/11.0 write 39
    assert "id" not in dashboard or dashboard["id"] is None  # provisioning assigns it

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    model, variant = variables["model"], variables["variant"]
    assert model["type"] == "query" and model["definition"] == "label_values(slimserve_requests_total, model)"
    assert model["query"]["query"] == model["definition"]
    assert variant["type"] == "query" and variant["multi"] and variant["includeAll"]
    assert "label_values(" in variant["definition"] and '"$model"' in variant["definition"]
    for v in (model, variant):
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}

    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert {k: type(grid[k]) for k in "hwxy"} == dict.fromkeys("hwxy", int), panel["title"]
        assert grid["h"] >= 1 and 1 <= grid["w"] <= 24 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["y"] >= 0 and panel["title"].strip() and panel["type"]
        boxes.append((panel["title"], grid))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel["targets"]
        refs = [t["refId"] for t in targets]
        assert targets and all(refs) and len(refs) == len(set(refs)), (panel["title"], refs)
        for target in targets:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}", panel["title"]
    for i, (title_a, a) in enumerate(boxes):  # panels never overlap on the grid
        for title_b, b in boxes[i + 1:]:
            overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                       and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
            assert not overlap, f"{title_a!r} overlaps {title_b!r}"


def test_queries_use_defined_variables_and_known_functions() -> None:
    dashboard = _dashboard()
    defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
    for panel, target in _queries(dashboard):
        query = Query(target["expr"])
        used = {a or b for a, b in VARIABLE.findall(target["expr"])}
        assert used <= defined, (panel["title"], used - defined)
        assert not query.unknown_functions, (panel["title"], query.unknown_functions)
        assert query.metrics, (panel["title"], target["expr"])
        # Legends name labels the query keeps.
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend <= query.grouping, (panel["title"], legend - query.grouping)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Series name -> label names, from /metrics of a real server that served traffic with shadow routing."""
    root = tmp_path_factory.mktemp("dashboard_repo")
    write_tiny_repository(root, routing={"policy": "fixed", "variant": "small", "shadow": {"fraction": 1.0}})
    server: ServerProcess = start_server(root)
    try:
        client = triton.InferenceServerClient(server.url)
        x = triton.InferInput("input", [2, FEATURES], "FP32")
        x.set_data_from_numpy(np.random.default_rng(0).normal(size=(2, FEATURES)).astype(np.float32))
        for version in ("", "", "", "teacher", "small"):
            client.infer("tiny", [x], model_version=version)
        with pytest.raises(InferenceServerException):  # one error, so a code other than OK is exported
            client.infer("tiny", [x], model_version="no-such-variant")
        deadline = time.monotonic() + 15  # shadow runs after the reply: wait for its first agreement
        text = server.metrics()
        while "slimserve_shadow_agreement{" not in text and time.monotonic() < deadline:
            time.sleep(0.1)
            text = server.metrics()
    finally:
        server.stop()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    assert "slimserve_shadow_agreement" in series, "no shadow agreement after 15 s of shadow routing"
    return series


def test_every_metric_on_the_dashboard_is_exported(scraped: dict[str, set[str]]) -> None:
    dashboard = _dashboard()
    used: set[str] = set()
    for panel, target in _queries(dashboard):
        query = Query(target["expr"])
        missing = query.metrics - scraped.keys()
        hints = [f"{m} is a histogram: query {m}_bucket, _sum or _count" for m in missing if f"{m}_bucket" in scraped]
        assert not missing, (panel["title"], sorted(missing), hints)
        for metric, labels in query.matchers:
            assert labels <= scraped[metric], (panel["title"], metric, labels - scraped[metric])
        available = set().union(*(scraped[m] for m in query.metrics)) | TARGET_LABELS
        assert query.grouping <= available, (panel["title"], query.grouping - available)
        used |= query.metrics
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"]).groups()
            (metric,) = Query(selector).metrics
            assert metric in scraped and label in scraped[metric], (variable["name"], metric, label)
    assert REQUIRED <= used, sorted(REQUIRED - used)
    # A metric added to the server shows up here until it is on the dashboard.
    families = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in scraped if name.startswith("slimserve_")}
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in used}
    assert families <= shown, sorted(families - shown)
