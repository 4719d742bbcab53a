"""The push-latency benchmark runs end to end (tiny: 3 subscribers, 2 rounds) with sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_push_latency_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "push_latency.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "push_latency.py"), "--subscribers", "3", "--rounds", "2",
         "--warmup", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "N=3" in result.stdout
    [measured] = json.loads(out.read_text())["results"]
    assert measured["subscribers"] == 3
    assert measured["ack_sent"]["samples"] == 3 * 2
    assert measured["ack_received"]["samples"] == 3 * 2
    # an ACK cannot come before the apply that caused it started, nor take longer than the round timeout
    assert 0 < measured["ack_sent"]["p50_ms"] <= measured["ack_sent"]["max_ms"] < 30_000
    assert measured["apply"]["p50_ms"] < measured["ack_received"]["max_ms"]


def test_push_latency_while_the_mesh_as_shipped_serves_traffic(tmp_path: Path) -> None:
    out = tmp_path / "push_latency.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "push_latency.py"), "--subscribers", "3", "--rounds", "2",
         "--warmup", "1", "--traffic", "100x2", "--traffic-max-seconds", "60", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["target"].endswith("while the mesh serves 100x2")
    [measured] = doc["results"]
    # only the subscribers' ACKs are timed, not the mesh's own sidecars (which the control plane also has)
    assert measured["ack_sent"]["samples"] == 3 * 2
    assert measured["ack_received"]["samples"] == 3 * 2
    served = measured["traffic"]
    # the traffic went through sleep's and httpbin's sidecars for the whole measurement, all answered
    assert served["completed"] > 0 and served["errors"] == 0 and served["non_2xx"] == 0
    assert "answered, 0 errors, 0 non-2xx" in result.stdout
