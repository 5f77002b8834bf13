"""`auto` routes on live shadow quality (demotes and promotes again); a split reports both arms with intervals."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, start_server
from tiny_repository import CLASSES, FEATURES, linear_model

from modelrepo.schema import validate
from protos import compression_pb2 as cpb
from protos import compression_pb2_grpc as cpb_grpc
from server.errors import InvalidInput
from server.livequality import QualityWindow, median_interval, normal_interval, wilson
from server.repository import Repository
from server.router import parse_policy
from server.shadow import ModelLive, ShadowTracker

MIN_SAMPLES = 40  # auto's live window is twice this: 80 rows
WAIT = 60.0  # bound for shadow results to arrive; polls return as soon as they do


def _weights(flips: bool) -> tuple[np.ndarray, np.ndarray]:
    """Teacher: always class 0. `fast`: class 0 while x[0] > 0, class 1 once x[0] < -0.1 (logit1 = -1 - 10·x[0])."""
    weight = np.zeros((FEATURES, CLASSES), np.float32)
    if flips:
        weight[0, 1] = -10.0
    return weight, np.array([0.0, -1.0, -10.0], np.float32)


def _write_model(root: Path, name: str, routing: dict) -> None:
    folder = root / name
    variants = {}
    for vname, flips, p50, accuracy in (("teacher", False, 0.2, 0.95), ("fast", True, 0.1, 0.94)):
        path = folder / vname / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(linear_model(*_weights(flips)), path)
        data = path.read_bytes()
        variants[vname] = {
            "kind": vname, "parent": None if vname == "teacher" else "teacher",
            "recipe": {"name": "test", "params": {}}, "file": f"{vname}/model.onnx",
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "parameters": FEATURES * CLASSES + CLASSES, "macs": FEATURES * CLASSES,
            # Both within a 0.05 budget at build time; `fast` is twice as fast, so auto prefers it.
            "quality": {"accuracy": accuracy, "agreement": 1.0 if vname == "teacher" else 0.99},
            "latency": {"threads": 1, "cpu": "test", "batch_1": {"p50_ms": p50, "p95_ms": p50 * 2, "runs": 10},
                        "batch_32": {"p50_ms": p50 * 8, "p95_ms": p50 * 16, "runs": 10}},
            "build_seconds": 0.0,
        }
    x = np.random.default_rng(0).normal(size=(64, FEATURES)).astype(np.float32)
    np.savez(folder / "heldout.npz", x=x[:32], y=np.zeros(32, np.int64))
    np.savez(folder / "calibration.npz", x=x[32:])
    manifest = {
        "schema_version": 1, "name": name, "task": "classification", "created": "2026-01-01T00:00:00Z",
        "host": {"cpu": "test", "cores": 1, "int8_features": []},
        "tools": {"python": "3.11", "onnx": onnx.__version__, "onnxruntime": "test", "slimserve": "test"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, CLASSES]}],
        "primary_metric": "accuracy", "default_variant": "teacher", "routing": routing, "variants": variants,
        "data": {"name": "random", "seed": 0, "splits": {"test": 32}, "heldout_file": "heldout.npz",
                 "calibration_file": "calibration.npz"},
    }
    assert validate(manifest) == [], validate(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("live_repo")
    _write_model(root, "live", {"policy": "auto", "max_drop": 0.05, "min_samples": MIN_SAMPLES,
                                "shadow": {"fraction": 1.0}})
    _write_model(root, "ab", {"policy": "split", "weights": {"teacher": 1, "fast": 1}, "min_samples": 20,
                              "shadow": {"fraction": 1.0}})
    return root


@pytest.fixture(scope="module")
def server(repo: Path):
    process = start_server(repo)
    yield process
    process.stop()


def _rows(sign: float, seed: int, count: int) -> list[np.ndarray]:
    """`count` single-row inputs whose x[0] has the given sign (|x[0]| in [0.5, 2])."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 1, FEATURES)).astype(np.float32)
    x[:, 0, 0] = sign * rng.uniform(0.5, 2.0, size=count)
    return list(x)


def _send(server: ServerProcess, model: str, rows: list[np.ndarray], version: str = "") -> Counter:
    """One request per row (routed by the policy unless `version`); counts which variant answered."""
    client = triton.InferenceServerClient(server.url)
    answered: Counter = Counter()
    for x in rows:
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        answered[client.infer(model, [tensor], model_version=version).get_response().model_version] += 1
    return answered


def _sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def _wait_compared(server: ServerProcess, model: str, variant: str, rows: int) -> str:
    """Poll /metrics until the shadow comparisons of `variant` reach `rows`; returns that scrape."""
    deadline = time.monotonic() + WAIT
    while True:
        text = server.metrics()
        seen = _sample(text, "slimserve_shadow_compared_total", model=model, variant=variant) or 0
        if seen >= rows or time.monotonic() > deadline:
            assert seen == rows, f"{model}/{variant}: {seen} rows compared with the teacher, expected {rows}"
            return text
        time.sleep(0.05)


def _admin(server: ServerProcess) -> cpb_grpc.CompressionServiceStub:
    return cpb_grpc.CompressionServiceStub(grpc.insecure_channel(server.url))


def test_auto_demotes_on_live_disagreement_and_promotes_again(server: ServerProcess) -> None:
    admin = _admin(server)
    routing = admin.GetRouting(cpb.GetRoutingRequest(model="live"), timeout=10)
    assert (routing.chosen, routing.min_samples, list(routing.demoted)) == ("fast", MIN_SAMPLES, [])
    window = 2 * MIN_SAMPLES

    # Inputs where `fast` agrees with the teacher: it takes the traffic, and its live interval confirms it.
    assert _send(server, "live", _rows(+1, seed=1, count=window)) == {"fast": window}
    _wait_compared(server, "live", "fast", window)
    listed = {v.name: v for v in admin.ListVariants(cpb.ListVariantsRequest(model="live"), timeout=10).variants}
    live = listed["fast"].live
    assert (live.metric, live.compared, live.agreeing, live.mean) == ("agreement", window, window, 1.0)
    assert 0.95 <= live.lower <= live.mean <= live.upper <= 1.0

    # Inputs where it disagrees: demoted within MIN_SAMPLES compared rows; the teacher takes over.
    answered = _send(server, "live", _rows(-1, seed=2, count=MIN_SAMPLES))
    text = _wait_compared(server, "live", "fast", window + MIN_SAMPLES)
    routing = admin.GetRouting(cpb.GetRoutingRequest(model="live"), timeout=10)
    assert routing.chosen == "teacher" and list(routing.demoted) == ["fast"], routing
    assert answered["fast"] + answered["teacher"] == MIN_SAMPLES, answered
    change = routing.changes[-1]
    assert (change.from_variant, change.to_variant) == ("fast", "teacher") and "demoted fast" in change.reason
    # Judged on every compared row: demoted at the 8th disagreeing one (72 of 80 agree, Wilson upper 0.9485).
    assert "upper bound 0.9485 < 0.9500 over the last 80 rows" in change.reason, change.reason
    assert _sample(text, "slimserve_routing_changes_total", model="live", from_variant="fast", to_variant="teacher") == 1
    lower = _sample(text, "slimserve_shadow_agreement_lower", model="live", variant="fast")
    mean = _sample(text, "slimserve_shadow_agreement", model="live", variant="fast")
    upper = _sample(text, "slimserve_shadow_agreement_upper", model="live", variant="fast")
    assert lower is not None and mean is not None and upper is not None
    assert lower <= mean <= upper < 0.95
    assert _sample(text, "slimserve_shadow_agreeing_total", model="live", variant="fast") == window

    # Back to inputs where it agrees: still measured as a candidate while the teacher serves, and promoted
    # once its whole window agrees again.
    assert _send(server, "live", _rows(+1, seed=3, count=window)) == {"teacher": window}
    text = _wait_compared(server, "live", "fast", 2 * window + MIN_SAMPLES)
    routing = admin.GetRouting(cpb.GetRoutingRequest(model="live"), timeout=10)
    assert routing.chosen == "fast" and list(routing.demoted) == [], routing
    assert [(c.from_variant, c.to_variant) for c in routing.changes] == [("fast", "teacher"), ("teacher", "fast")]
    assert "promoted fast" in routing.changes[-1].reason
    assert _sample(text, "slimserve_routing_changes_total", model="live", from_variant="teacher", to_variant="fast") == 1
    assert _send(server, "live", _rows(+1, seed=4, count=1)) == {"fast": 1}
    arms = {a.variant: a for a in routing.arms}
    assert set(arms) == {"teacher", "fast"} and arms["fast"].weight == 1.0
    assert arms["fast"].live.lower >= 0.95


def test_split_reports_both_arms_with_intervals(server: ServerProcess) -> None:
    answered = _send(server, "ab", _rows(+1, seed=5, count=60))
    assert set(answered) == {"teacher", "fast"}, answered
    _wait_compared(server, "ab", "fast", answered["fast"])
    routing = _admin(server).GetRouting(cpb.GetRoutingRequest(model="ab"), timeout=10)
    arms = {a.variant: a for a in routing.arms}
    assert set(arms) == {"teacher", "fast"}
    for name, arm in arms.items():
        assert arm.weight == 0.5 and arm.requests == answered[name]
        assert 0 < arm.p50_ms_lower <= arm.p50_ms <= arm.p50_ms_upper, arm
        assert arm.live.lower <= arm.live.mean <= arm.live.upper, arm
    assert arms["fast"].live.compared == answered["fast"] and arms["fast"].live.mean == 1.0
    assert arms["teacher"].live.mean == 1.0  # the reference


def test_set_routing_takes_min_samples_and_keeps_live_quality(server: ServerProcess, repo: Path) -> None:
    # Each row sent to `fast` is compared with the teacher (shadow 1.0 applies to an explicit version too);
    # earlier tests waited for all of theirs, so no comparison is pending here.
    before = _sample(server.metrics(), "slimserve_shadow_compared_total", model="ab", variant="fast") or 0
    _send(server, "ab", _rows(+1, seed=6, count=20), version="fast")
    _wait_compared(server, "ab", "fast", before + 20)
    routing = _admin(server).SetRouting(cpb.SetRoutingRequest(routing=cpb.Routing(
        model="ab", policy="auto", max_drop=0.05, min_samples=5, shadow_fraction=1.0)), timeout=10)
    assert routing.min_samples == 5 and routing.chosen == "fast"
    # The new Router reads the same live state: the split's rows still count, in a window now 2 x 5 rows long.
    live = {a.variant: a.live for a in routing.arms}["fast"]
    assert (live.compared, live.mean) == (10, 1.0) and live.lower <= live.mean <= live.upper
    assert json.loads((repo / "ab" / "manifest.json").read_text())["routing"]["min_samples"] == 5


def test_min_samples_is_validated(repo: Path) -> None:
    spec = Repository(repo).load_spec("live")
    assert parse_policy({"policy": "auto", "min_samples": 7}, spec).min_samples == 7
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(InvalidInput, match="routing.min_samples"):
            parse_policy({"policy": "auto", "min_samples": bad}, spec)


def test_intervals() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    lower, upper = wilson(80, 80)
    assert 0.95 < lower < upper <= 1.0  # all 80 agreeing clears a 0.95 budget ...
    assert wilson(79, 80)[0] < 0.95  # ... and one disagreement is enough not to
    assert wilson(72, 80)[1] < 0.95  # 8 of 80 disagreeing is enough to demote
    assert normal_interval(45.0, 45.0 * 0.81, 50) == pytest.approx((0.9, 0.9))  # no spread, no width
    # The textbook 95% interval for the median of 100 samples is [x(40), x(61)].
    assert median_interval(range(1, 101)) == (50.5, 40, 61)
    assert median_interval([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)  # too few for 95%: [min, max]
    assert median_interval([]) is None


def test_standing_changes_only_on_evidence() -> None:
    """Hysteresis: meets at lower >= budget, demoted at upper < budget, unchanged in between."""
    live = ModelLive("m", threading.Lock())
    live.configure("classification", {"v": "sha"}, min_samples=40, budget=0.95)
    assert not live.record("v", [1.0] * 39) and live.verdict("v") is None  # below min_samples: build time decides
    live.record("v", [1.0] * 41)
    assert live.verdict("v") is True  # 80 of 80
    live.record("v", [0.0] * 4)
    assert live.verdict("v") is True  # 76 of 80: interval straddles 0.95, standing kept
    assert live.record("v", [0.0] * 4) and live.verdict("v") is False and live.demoted() == ["v"]
    live.record("v", [1.0] * 79)
    assert live.verdict("v") is False  # one disagreement still in the window
    assert live.record("v", [1.0]) and live.verdict("v") is True
    live.configure("classification", {"v": "new-sha"}, min_samples=40, budget=0.95)
    assert live.verdict("v") is None and live.interval("v") is None  # a new file starts from scratch


def test_cosine_window_matches_a_direct_computation() -> None:
    values = np.random.default_rng(7).uniform(0.8, 1.0, size=95)
    window = QualityWindow("cosine", 30)
    for chunk in np.array_split(values, 9):
        window.add(chunk.tolist())
    live, last = window.interval(), values[-30:]
    half = 1.959963984540054 * last.std(ddof=1) / np.sqrt(30)
    assert live.n == 30 and live.mean == pytest.approx(last.mean())
    assert (live.lower, live.upper) == pytest.approx((last.mean() - half, last.mean() + half))
    assert (window.compared_total, window.agreeing_total) == (95, pytest.approx(values.sum()))


def test_shadow_work_in_flight_is_bounded() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        tracker, gate = ShadowTracker(max_in_flight=1), asyncio.Event()
        first = tracker.spawn(gate.wait())
        second = tracker.spawn(gate.wait())  # refused (and closed, never awaited) while the first runs
        gate.set()
        while tracker.in_flight:
            await asyncio.sleep(0)
        return first, second, tracker.spawn(asyncio.sleep(0))

    assert asyncio.run(scenario()) == (True, False, True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clients", *args], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)


def test_cli_loads_rows_of_a_file_and_shows_then_sets_the_routing(server: ServerProcess, tmp_path: Path) -> None:
    """`clients load --data` sends the file's rows in turn; `clients routing` shows both arms' live figures and
    replaces the policy. Runs last in this module: it leaves `ab` on a fixed policy."""
    data = tmp_path / "positive.npz"
    np.savez(data, input=np.concatenate(_rows(+1, seed=9, count=30)))
    split = _cli("routing", "--url", server.url, "--model", "ab", "--policy", "split", "--weight", "teacher=1",
                 "--weight", "fast=1", "--shadow", "1", "--min-samples", "20")
    assert split.returncode == 0, split.stderr
    assert split.stdout.startswith("ab: policy split (shadow 1, min_samples 20)"), split.stdout
    before = _admin(server).GetRouting(cpb.GetRoutingRequest(model="ab"), timeout=10)
    sent = {a.variant: a.requests for a in before.arms}
    compared = _sample(server.metrics(), "slimserve_shadow_compared_total", model="ab", variant="fast") or 0
    load = _cli("load", "--url", server.url, "--model", "ab", "--data", str(data), "--requests", "30",
                "--concurrency", "1")
    assert load.returncode == 0, load.stderr
    assert "requests: 30 in" in load.stdout and "(30 ok)" in load.stdout, load.stdout
    routing = _admin(server).GetRouting(cpb.GetRoutingRequest(model="ab"), timeout=10)
    arms = {a.variant: a for a in routing.arms}
    assert sum(arms[n].requests - sent.get(n, 0) for n in arms) == 30
    _wait_compared(server, "ab", "fast", int(compared) + arms["fast"].requests - sent["fast"])

    shown = _cli("routing", "--url", server.url, "--model", "ab")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("ab: policy split ("), lines[0]
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "variant" not in line}
    assert set(rows) == {"teacher", "fast"}, shown.stdout
    assert "reference" in rows["teacher"] and f"| {arms['fast'].requests} " in rows["fast"], shown.stdout
    assert " over " in rows["fast"] and "[" in rows["fast"], shown.stdout  # quality and latency with intervals

    changed = _cli("routing", "--url", server.url, "--model", "ab", "--policy", "fixed", "--variant", "fast")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.startswith("ab: policy fixed (variant fast"), changed.stdout
    assert _send(server, "ab", _rows(-1, seed=10, count=3)) == Counter({"fast": 3})

    bad = _cli("routing", "--url", server.url, "--model", "ab", "--policy", "fixed", "--variant", "nope")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
