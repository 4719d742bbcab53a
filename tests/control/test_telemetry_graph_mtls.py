"""The service graph's mTLS padlock: only the callee's sidecar knows the connection was mutual TLS."""

from __future__ import annotations

from typing import Any

from meshkit.cli.mesh_verbs import _top_lines
from meshkit.control.telemetry import TelemetryStore
from meshkit.proxy.stats import IstioMetrics
from tests.control.test_telemetry import _record


def _graph(security: str) -> dict[tuple[str, str], bool]:
    caller, callee = IstioMetrics(), IstioMetrics()
    store = TelemetryStore()
    store.add("productpage", 0.0, caller.render())
    store.add("reviews", 0.0, callee.render())
    _record(caller, 10, 5.0, src="productpage-v1", dst_version="v1", code="200")  # source: "unknown"
    _record(callee, 10, 5.0, src="productpage-v1", dst_version="v1", code="200", reporter="destination",
            security=security)
    store.add("productpage", 5.0, caller.render())
    store.add("reviews", 5.0, callee.render())
    return {(e["source"], e["target"]): e["mtls"] for e in store.graph(window=5.0, now=5.0)["edges"]}


def test_graph_edge_gets_the_padlock_from_the_destination_report() -> None:
    assert _graph("mutual_tls") == {("productpage-v1", "reviews-v1"): True}


def test_graph_edge_has_no_padlock_when_the_callee_saw_plaintext() -> None:
    assert _graph("none") == {("productpage-v1", "reviews-v1"): False}



def _top_answer(security: str) -> dict[str, Any]:
    """The telemetry query `meshkit top` prints: one caller-side row per edge."""
    caller, callee = IstioMetrics(), IstioMetrics()
    store = TelemetryStore()
    store.add("productpage", 0.0, caller.render())
    store.add("reviews", 0.0, callee.render())
    _record(caller, 10, 5.0, src="productpage-v1", dst_version="v1", code="200")  # source: "unknown"
    _record(callee, 10, 5.0, src="productpage-v1", dst_version="v1", code="200", reporter="destination",
            security=security)
    store.add("productpage", 5.0, caller.render())
    store.add("reviews", 5.0, callee.render())
    return store.query(window=5.0, now=5.0)


def _mtls_column(answer: dict[str, Any]) -> list[str]:
    header, *rows = _top_lines(answer)
    column = header.index("mTLS")  # columns are left-aligned: a cell starts where its heading does
    return [row[column:].split()[0] for row in rows]


def test_top_under_strict_says_mtls_yes_from_the_receiving_side() -> None:
    answer = _top_answer("mutual_tls")
    assert [(e["reporter"], e["source_workload"], e["mtls"]) for e in answer["edges"]] == [
        ("source", "productpage-v1", True)]
    assert _mtls_column(answer) == ["yes"]


def test_top_under_plaintext_says_mtls_no() -> None:
    answer = _top_answer("none")
    assert [e["mtls"] for e in answer["edges"]] == [False]
    assert _mtls_column(answer) == ["no"]


def test_same_named_workloads_of_two_namespaces_are_two_graph_nodes() -> None:
    """Istio's mTLS migration layout: sleep in foo and in bar both call httpbin in bar."""
    metrics = IstioMetrics()
    store = TelemetryStore()
    store.add("httpbin-0.bar", 0.0, metrics.render())
    for source_namespace in ("foo", "bar"):
        values = {
            "reporter": "source", "source_workload": "sleep", "source_workload_namespace": source_namespace,
            "destination_workload": "httpbin", "destination_workload_namespace": "bar",
            "destination_version": "v1", "destination_service_name": "httpbin",
            "destination_service_namespace": "bar", "destination_service": "httpbin.bar.svc.cluster.local",
            "response_code": "200", "response_flags": "-", "connection_security_policy": "mutual_tls",
        }
        series = metrics.series(tuple(sorted(values.items())), lambda values=values: values)
        series.record(3.0, 0, 100)
    store.add("httpbin-0.bar", 5.0, metrics.render())
    graph = store.graph(window=5.0, now=5.0)
    assert {(n["id"], n["namespace"]) for n in graph["nodes"]} == {
        ("sleep.foo", "foo"), ("sleep.bar", "bar"), ("httpbin.bar", "bar")}
    assert sorted((e["source"], e["target"]) for e in graph["edges"]) == [
        ("sleep.bar", "httpbin.bar"), ("sleep.foo", "httpbin.bar")]
