"""Telemetry queries over real sidecar metric expositions (rendered by the proxy's own registry)."""

from __future__ import annotations

import pytest

from meshkit.control.telemetry import TelemetryStore, histogram_quantile
from meshkit.proxy.stats import IstioMetrics


def _labels(src: str, dst_version: str, code: str, *, flags: str = "-", reporter: str = "source",
            security: str = "unknown") -> dict[str, str]:
    return {
        "reporter": reporter, "source_workload": src, "source_workload_namespace": "default",
        "destination_workload": f"reviews-{dst_version}", "destination_workload_namespace": "default",
        "destination_version": dst_version, "destination_service_name": "reviews",
        "destination_service_namespace": "default",
        "destination_service": "reviews.default.svc.cluster.local", "response_code": code,
        "response_flags": flags, "connection_security_policy": security,
    }


def _record(metrics: IstioMetrics, n: int, duration_ms: float, **labels: str) -> None:
    values = _labels(**labels)  # type: ignore[arg-type]
    series = metrics.series(tuple(sorted(values.items())), lambda: values)
    for _ in range(n):
        series.record(duration_ms, 0, 100)


def test_rates_split_and_errors_over_a_window() -> None:
    metrics = IstioMetrics()
    store = TelemetryStore()
    store.add("productpage", 1000.0, metrics.render())
    _record(metrics, 80, 12.0, src="productpage-v1", dst_version="v1", code="200")
    _record(metrics, 15, 30.0, src="productpage-v1", dst_version="v3", code="200")
    _record(metrics, 5, 2.0, src="productpage-v1", dst_version="v3", code="500", flags="FI")
    store.add("productpage", 1010.0, metrics.render())

    answer = store.query(window=10.0, now=1010.0)
    assert answer["seconds"] == pytest.approx(10.0)
    by_version = {e["destination_version"]: e for e in answer["edges"]}
    assert by_version["v1"]["rps"] == pytest.approx(8.0)
    assert by_version["v3"]["requests"] == 20
    assert by_version["v3"]["error_rate"] == pytest.approx(0.25)
    assert by_version["v3"]["flags"] == {"FI": 5}
    assert by_version["v3"]["codes"] == {"200": 15, "500": 5}
    # 80 requests of 12 ms all fall in the (10, 25] bucket: the median interpolates inside it.
    assert 10.0 < by_version["v1"]["latency_ms"]["p50"] <= 25.0


def test_window_excludes_older_traffic_and_survives_counter_reset() -> None:
    metrics = IstioMetrics()
    store = TelemetryStore()
    _record(metrics, 50, 5.0, src="productpage-v1", dst_version="v1", code="200")
    store.add("pp", 100.0, metrics.render())
    _record(metrics, 50, 5.0, src="productpage-v1", dst_version="v1", code="200")
    store.add("pp", 200.0, metrics.render())
    assert store.query(window=50.0, now=200.0)["edges"][0]["requests"] == 50
    # The sidecar restarts: its counters start again from zero.
    fresh = IstioMetrics()
    _record(fresh, 7, 5.0, src="productpage-v1", dst_version="v1", code="200")
    store.add("pp", 210.0, fresh.render())
    assert store.query(window=10.0, now=210.0)["edges"][0]["requests"] == 7


def test_destination_reports_only_callers_outside_the_mesh() -> None:
    client_side, server_side = IstioMetrics(), IstioMetrics()
    store = TelemetryStore()
    store.add("pp", 0.0, client_side.render())
    store.add("reviews", 0.0, server_side.render())
    _record(client_side, 10, 5.0, src="productpage-v1", dst_version="v1", code="200")
    _record(server_side, 10, 5.0, src="productpage-v1", dst_version="v1", code="200", reporter="destination",
            security="mutual_tls")
    _record(server_side, 4, 5.0, src="unknown", dst_version="v1", code="200", reporter="destination")
    store.add("pp", 5.0, client_side.render())
    store.add("reviews", 5.0, server_side.render())
    edges = store.query(window=5.0, now=5.0)["edges"]
    assert sorted((e["source_workload"], e["reporter"], e["requests"]) for e in edges) == [
        ("productpage-v1", "source", 10), ("unknown", "destination", 4)]
    graph = store.graph(window=5.0, now=5.0)
    assert {n["id"] for n in graph["nodes"]} == {"productpage-v1", "unknown", "reviews-v1"}
    dest_only = store.query(window=5.0, now=5.0, reporter="destination")["edges"]
    assert any(e["mtls"] for e in dest_only)


def test_series_gives_per_second_split() -> None:
    metrics = IstioMetrics()
    store = TelemetryStore()
    for second in range(6):
        _record(metrics, 9, 5.0, src="productpage-v1", dst_version="v1", code="200")
        _record(metrics, 1, 5.0, src="productpage-v1", dst_version="v2", code="200")
        store.add("pp", float(second), metrics.render())
    points = store.series(window=5.0, step=1.0, now=5.0)["points"]
    assert len(points) == 5
    assert all(p["rps"] == {"v1": pytest.approx(9.0), "v2": pytest.approx(1.0)} for p in points)


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    buckets = {10.0: 0.0, 25.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(17.5)
    assert histogram_quantile(0.99, {1.0: 0.0, float("inf"): 10.0}) == 1.0
    assert histogram_quantile(0.5, {}) is None


def test_fast_parser_agrees_with_prometheus_client_on_sidecar_output() -> None:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    from meshkit.control.telemetry import EDGE_LABELS, REQUEST_LABELS, ScrapeParser  # noqa: PLC0415

    metrics = IstioMetrics()
    _record(metrics, 3, 7.0, src='we"ird\\name', dst_version="v1", code="200")
    _record(metrics, 2, 700.0, src="productpage-v1", dst_version="v2", code="503", flags="UO")
    text = metrics.render()
    requests, buckets = ScrapeParser().parse(text)
    expected_requests = {}
    expected_buckets = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "istio_requests_total":
                expected_requests[tuple(s.labels.get(k, "") for k in REQUEST_LABELS)] = s.value
            elif s.name == "istio_request_duration_milliseconds_bucket":
                key = (tuple(s.labels.get(k, "") for k in EDGE_LABELS), float(s.labels["le"]))
                expected_buckets[key] = s.value
    assert requests == expected_requests
    assert buckets == expected_buckets
    assert any(key[1] == 'we"ird\\name' for key in requests)
    with pytest.raises(ValueError, match="malformed"):
        ScrapeParser().parse("istio_requests_total{reporter=\"source\"}\n")
