"""Smoke test of ``benchmarks/istio_method.py --telemetry-cost`` (issue 19's telemetry ratios).

A short run on a real mesh (1 s per condition, one round): the report has the three conditions,
both ratios with a verdict, one sample per condition, and the switch really changed the sidecars
(httpbin's sidecar counts the requests with telemetry on and none with it off). No timing bounds:
the figures are in benchmarks/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.conftest import BENCHMARKS

pytestmark = pytest.mark.timeout(300)


def test_a_short_run_reports_both_ratios(tmp_path: Path) -> None:
    out = tmp_path / "telemetry_cost.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "istio_method.py"), "--telemetry-cost", "--seconds", "1",
         "--rounds", "1", "--points", "100x2", "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) == {"meta", "conditions", "ratios", "loadavg_1m", "samples"}
    assert report["meta"]["plan"]["conditions"] == ["on", "off", "no-tracing"]
    conditions = report["conditions"]
    assert set(conditions) == {"on", "off", "no-tracing"}
    for cell in conditions.values():
        assert cell["rounds"] == 1 and cell["errors"] == 0
        assert cell["cpu_us_per_request_pair"] > 0
        assert cell["cpu_us_per_request_per_sidecar"] == pytest.approx(cell["cpu_us_per_request_pair"] / 2)
    assert conditions["on"]["counted_by_metrics"] > 0 and conditions["no-tracing"]["counted_by_metrics"] > 0
    assert conditions["off"]["counted_by_metrics"] == 0
    assert set(report["ratios"]) == {"telemetry on vs off, CPU per request",
                                     "tracing 1% vs tracing off, CPU per request"}
    for ratio in report["ratios"].values():
        assert ratio["verdict"] in {"PASS", "FAIL"} and len(ratio["per_round_percent"]) == 1
        assert ratio["median_per_round_percent"] == pytest.approx(ratio["percent"], abs=0.1)  # one round
    assert sorted(s["condition"] for s in report["samples"]) == ["no-tracing", "off", "on"]
    assert all(s["requests"] > 0 for s in report["samples"])
    assert "telemetry on vs off" in done.stdout
