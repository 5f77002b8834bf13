"""Unit tests of the client's pure parts: metrics parsing, URLs, input fitting, reporting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.errors import DataError
from clients.inputs import fit, random_inputs
from clients.metrics import default_metrics_url, parse_metrics
from clients.model import ModelInfo, TensorInfo
from clients.report import fmt, percentiles, table

SCRAPE = """\
# HELP slimserve_compute_duration_seconds Time of the ONNX Runtime run
# TYPE slimserve_compute_duration_seconds histogram
slimserve_compute_duration_seconds_bucket{le="0.001",model="m",variant="a"} 3.0
slimserve_compute_duration_seconds_bucket{le="+Inf",model="m",variant="a"} 4.0
slimserve_compute_duration_seconds_count{model="m",variant="a"} 4.0
slimserve_compute_duration_seconds_sum{model="m",variant="a"} 0.008
# HELP slimserve_variant_memory_bytes Resident memory
# TYPE slimserve_variant_memory_bytes gauge
slimserve_variant_memory_bytes{model="m",variant="a"} 1048576.0
slimserve_variant_memory_bytes{model="m",variant="b"} 2048.0
"""

MODEL = ModelInfo("m", "onnxruntime_onnx", ("a", "b"), (TensorInfo("input", "FP32", (-1, 4)),),
                  (TensorInfo("logits", "FP32", (-1, 3)),))


def test_parse_metrics_by_labels() -> None:
    snap = parse_metrics(SCRAPE)
    assert snap.histogram("slimserve_compute_duration_seconds", model="m", variant="a") == (0.008, 4.0)
    assert snap.histogram("slimserve_compute_duration_seconds", model="m", variant="b") is None
    assert snap.value("slimserve_variant_memory_bytes", model="m", variant="b") == 2048.0
    assert snap.value("slimserve_variant_memory_bytes", model="m") == 1048576.0 + 2048.0
    assert snap.value("nothing_here") is None


@pytest.mark.parametrize("url, expected", [
    ("127.0.0.1:8001", "http://127.0.0.1:8002/metrics"),
    ("serving.example:9000", "http://serving.example:8002/metrics"),
    ("[::1]:8001", "http://[::1]:8002/metrics"),
    ("localhost", "http://localhost:8002/metrics"),
])
def test_default_metrics_url(url: str, expected: str) -> None:
    assert default_metrics_url(url) == expected


def test_fit_casts_and_adds_the_batch_axis() -> None:
    out = fit(MODEL.inputs[0], np.arange(4, dtype=np.float64), "x")
    assert out.dtype == np.float32 and out.shape == (1, 4)
    with pytest.raises(DataError, match="does not fit"):
        fit(MODEL.inputs[0], np.zeros((2, 5), dtype=np.float32), "x")


def test_random_inputs_follow_metadata() -> None:
    inputs = random_inputs(MODEL, batch=3, seed=0)
    assert inputs["input"].shape == (3, 4) and inputs["input"].dtype == np.float32
    assert MODEL.is_classifier()


def test_reporting_helpers() -> None:
    assert percentiles([1.0, 2.0, 3.0], (50,)) == [2.0]
    assert fmt(None) == "n/a" and fmt(float("nan")) == "n/a" and fmt(1.23456, 2) == "1.23"
    lines = table(["a", "bb"], [["1", "2"]]).splitlines()
    assert lines[0] == "| a | bb |" and lines[2] == "| 1 | 2  |"


def test_pure_modules_do_not_load_tritonclient_grpc() -> None:
    """tritonclient's generated `inference` protos collide with the server's in one process (so in pytest too)."""
    code = ("import sys, clients, clients.inputs, clients.metrics, clients.report, clients.model; "
            "sys.exit('tritonclient.grpc' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent).returncode == 0
