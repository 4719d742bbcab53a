"""meshkit.lab.observe on a real mesh: RED table, Istio metric text, access logs, one request's trace."""

from __future__ import annotations

import time

import pytest

from meshkit.lab import LabError, rules
from meshkit.lab.mesh import Mesh
from meshkit.lab.observe import (
    LABEL_MEANINGS,
    access_log,
    edge,
    explain,
    metrics,
    parse_metrics,
    red,
    red_rows,
    trace,
    traced_request,
)
from tests.labs.conftest import counted, settle


def test_red_rows_add_rates_and_errors_and_keep_the_worst_p99() -> None:
    edges = [
        {"destination_service": "reviews", "destination_workload": "reviews-v2", "requests": 30, "rps": 3.0,
         "error_rate": 0.5, "flags": {"URX": 15}, "latency_ms": {"p50": 10.0, "p99": 40.0}},
        {"destination_service": "reviews", "destination_workload": "reviews-v3", "requests": 10, "rps": 1.0,
         "error_rate": 0.0, "flags": {}, "latency_ms": {"p50": 30.0, "p99": 90.0}},
    ]
    [row] = red_rows(edges)
    assert row == {"service": "reviews", "rps": 4.0, "error %": 37.5, "p50 ms": 15.0, "p99 ms": 90.0,
                   "requests": 40, "flags": "URX 15"}
    assert [r["workload"] for r in red_rows(edges, "workload")] == ["reviews-v2", "reviews-v3"]
    with pytest.raises(LabError, match="by must be 'service' or 'workload'"):
        red_rows(edges, "pod")


def test_parse_metrics_reads_labels_with_escapes_and_names_a_bad_line() -> None:
    [sample] = parse_metrics('# HELP x y\nx_total{a="1",b="say \\"hi\\""} 3\n')
    assert sample.labels == {"a": "1", "b": 'say "hi"'} and sample.value == 3.0
    with pytest.raises(ValueError, match="line 2"):
        parse_metrics("ok 1\n{broken\n")


def test_red_edge_and_metrics_agree_with_the_traffic_sent(mesh: Mesh) -> None:
    mesh.apply(rules.canary("reviews", {"v2": 50, "v3": 50}))
    settle(mesh)  # nothing of an earlier test is still to be scraped
    started = time.time()
    summary = mesh.load(rps=15, duration=2).wait(15)
    counted(mesh, "productpage", summary["completed"], started)  # a scrape after the last answer
    window = time.time() - started + 1
    table = red(mesh, window)
    rows = {r["service"]: r for r in table.rows}
    assert set(rows) >= {"productpage", "details", "reviews", "ratings"}
    assert summary["completed"] <= rows["productpage"]["requests"] <= summary["completed"] + 3
    assert rows["productpage"]["error %"] == 0.0
    assert rows["reviews"]["p99 ms"] >= rows["reviews"]["p50 ms"] > 0
    workloads = {r["workload"] for r in red(mesh, window, by="workload").rows}
    assert {"reviews-v2", "reviews-v3"} <= workloads and "reviews-v1" not in workloads
    one = edge(mesh, "reviews-v2", "ratings", window)
    assert one["requests"] > 0 and one["codes"] == {"200": one["requests"]}
    assert edge(mesh, "reviews-v1", "ratings", window) == {}  # v1 never calls ratings
    # The same numbers straight from the ratings sidecar, in Istio's metric names and labels.
    served = metrics(mesh, "ratings-v1", reporter="destination", source_workload="reviews-v2")
    assert served and all(s.labels["destination_service_name"] == "ratings" for s in served)
    assert served.total() >= one["requests"]
    explained = explain(served)  # the first sample's labels
    assert "send traffic first" in explain(metrics(mesh, "ratings-v1", response_code="999")).title
    meanings = {r["label"]: r["meaning"] for r in explained.rows}
    assert meanings["response_flags"] == LABEL_MEANINGS["response_flags"] and "reporter" in meanings
    assert "mutual_tls" in {s.labels["connection_security_policy"] for s in served}
    with pytest.raises(LabError, match="no sidecar 'nope' among the scrape targets"):
        metrics(mesh, "nope")


def test_a_trace_follows_one_request_across_sidecars_and_shows_where_it_failed(mesh: Mesh) -> None:
    mesh.apply(rules.route("reviews", to="v2"))  # v2 calls ratings
    healthy = traced_request(mesh)
    assert healthy.status == 200
    hops = trace(mesh, healthy)
    assert {"ingressgateway", "productpage-v1-0", "details-v1-0", "reviews-v2-0", "ratings-v1-0"} <= \
        set(hops.sidecars())
    assert not hops.failed()
    assert hops.hops[0]["sidecar"] == "ingressgateway"  # the first hop starts first
    mesh.kill("ratings-v1-0")
    try:
        broken = traced_request(mesh)
        hops = trace(mesh, broken)
        assert broken.status == 200  # the page still answers: reviews hides the failure
        failed = {(h["sidecar"], h["direction"], h["response_flags"]) for h in hops.failed()}
        # Istio >= 1.24's default retry policy no longer retries a 503: the caller passes it on as is.
        assert ("reviews-v2-0", "outbound", "-") in failed
        # The callee's sidecar could not reach its app: refused (UF), or its kept-alive connection
        # to the app was reset (UC) when the app died.
        callee = {flags for name, way, flags in failed if (name, way) == ("ratings-v1-0", "inbound")}
        assert callee and callee <= {"UF", "UC"}, failed
        assert ("UF" in str(hops) or "UC" in str(hops)) and "+ms" in hops._repr_html_()
        log = access_log(mesh, "ratings-v1-0", last=1)  # one try: no default retry of a 503
        assert [(r["status"], r["response_flags"] in ("UF", "UC")) for r in log.rows] == [(503, True)]
    finally:
        mesh.restart("ratings-v1-0")
    assert trace(mesh, "no-such-request-id", wait=0.5).hops == []
    with pytest.raises(LabError, match="no instance 'nope'"):
        access_log(mesh, "nope")
    mesh.reset()
