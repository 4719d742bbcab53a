"""Smoke test of ``benchmarks/proxy_instructions.py``'s telemetry variants (issue 19's telemetry ratios).

The chains it compares must be what they say: ``--telemetry off`` is the shipped outbound chain
without its tracing, metrics and access-log filters and nothing else; ``metrics`` / ``tracing`` add
back just that one. Each variant also serves real requests through the in-process harness (a few
hundred, timing meaningless). The figures themselves are in benchmarks/README.md ("Round 7").
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshkit.proxy.pipeline import outbound_filters
from meshkit.proxy.stats import IstioMetrics
from tests.benchmarks.conftest import BENCHMARKS

pytestmark = pytest.mark.timeout(120)

SCRIPT = BENCHMARKS / "proxy_instructions.py"


def _modules(keep: str) -> list[str]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import proxy_instructions  # noqa: PLC0415 (a script, not a package)
    finally:
        sys.path.remove(str(BENCHMARKS))
    kept = proxy_instructions.telemetry_free_filters(IstioMetrics(), keep)
    return [f.__module__.rsplit(".", 1)[1] for f in kept]


def test_the_telemetry_off_chain_drops_exactly_the_telemetry_filters() -> None:
    shipped = [f.__module__.rsplit(".", 1)[1] for f in outbound_filters(IstioMetrics(), None)]
    assert shipped[:2] == ["tracing", "metrics"]  # the access log is added only with a sink
    assert _modules("") == [m for m in shipped if m not in ("tracing", "metrics")]
    assert _modules("metrics") == [m for m in shipped if m != "tracing"]
    assert _modules("tracing") == [m for m in shipped if m != "metrics"]


@pytest.mark.parametrize("telemetry", ["off", "metrics", "tracing"])
def test_each_variant_serves_requests(telemetry: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--telemetry", telemetry, "--requests", "300", "--rounds", "1"],
        capture_output=True, text=True, check=False, timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert f"telemetry {telemetry}" in done.stdout and "us per request" in done.stdout


def test_telemetry_off_refuses_tracing_and_access_log() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--telemetry", "off", "--access-log"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert "--telemetry off has no span recorder and no access log" in done.stderr
