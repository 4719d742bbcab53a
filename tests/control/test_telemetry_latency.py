"""Duration quantiles over time (the console's latency chart): per step, per service, version or edge."""

from __future__ import annotations

import pytest

from meshkit.control.telemetry import TelemetryStore
from meshkit.proxy.stats import IstioMetrics
from tests.control.test_telemetry import _record


def test_each_step_has_its_own_quantiles_and_the_filters_pick_the_edge() -> None:
    productpage, gateway = IstioMetrics(), IstioMetrics()
    store = TelemetryStore()
    for second in range(6):
        fast_or_slow = 5.0 if second < 3 else 800.0  # v1 slows down half-way through the window
        _record(productpage, 10, fast_or_slow, src="productpage-v1", dst_version="v1", code="200")
        _record(productpage, 10, 40.0, src="productpage-v1", dst_version="v2", code="200")
        _record(gateway, 5, 3000.0, src="istio-ingressgateway", dst_version="v1", code="200")
        store.add("pp", float(second), productpage.render())
        store.add("gw", float(second), gateway.render())
    edge = store.series(window=5.0, step=1.0, now=5.0, destination="reviews",
                        sources=frozenset({"productpage-v1"}), versions=frozenset({"v1"}))["points"]
    assert [sorted(p["rps"]) for p in edge] == [["v1"]] * 5
    p50 = [p["latency_ms"]["p50"] for p in edge]
    assert all(v is not None and v <= 10.0 for v in p50[:2]), p50  # steps ending at 1 s and 2 s
    assert all(v is not None and v > 500.0 for v in p50[3:]), p50  # after the slow-down
    for point in edge:
        q = point["latency_ms"]
        assert q["p50"] <= q["p95"] <= q["p99"]
    # the whole service: both callers and both versions; the gateway's 3 s calls lift p99
    service = store.series(window=5.0, step=1.0, now=5.0, destination="reviews")["points"]
    assert service[0]["rps"] == {"v1": pytest.approx(15.0), "v2": pytest.approx(10.0)}
    assert service[0]["latency_ms"]["p99"] > 2500.0
    assert edge[0]["latency_ms"]["p99"] < 25.0
    # a step without requests has no quantiles (a gap in the chart, not a zero)
    quiet = store.series(window=3.0, step=1.0, now=10.0, destination="reviews")["points"]
    assert all(p["latency_ms"] == {"p50": None, "p95": None, "p99": None} for p in quiet)
