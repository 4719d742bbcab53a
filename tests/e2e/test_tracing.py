"""Distributed tracing on a real Bookinfo mesh: one request, one trace, the delay on the right span.

Istio's "Request Timeouts" setup (every call to reviews goes to v2, which calls ratings) with a 1 s
delay fault on ratings: the request is forced into the trace with ``x-client-trace-id`` (the mesh
samples 1% by default), and the collector must hold one trace whose spans link ingress ->
productpage -> reviews -> ratings, client span to server span, with the delay on reviews' client
span to ratings (where the fault fires) and not inside ratings.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import httpx

from meshkit.control.client import ApiError
from meshkit.lab import charts
from meshkit.lab.mesh import Mesh
from tests.e2e.cli import meshkit
from tests.e2e.mesh import RunningMesh, rule, sample
from tests.e2e.traffic import eventually

DELAY_S = 1.0
RATINGS_DELAY = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "ratings", "namespace": "default"},
    "spec": {
        "hosts": ["ratings"],
        "http": [{"fault": {"delay": {"percentage": {"value": 100}, "fixedDelay": f"{DELAY_S:g}s"}},
                  "route": [{"destination": {"host": "ratings", "subset": "v1"}}]}],
    },
}


def _trace(mesh: RunningMesh, request_id: str) -> list[dict[str, Any]]:
    try:
        answer = mesh.client.request("GET", f"traces/{request_id}")
    except ApiError:
        return []
    spans: list[dict[str, Any]] = answer["spans"]
    return spans


def _service(span: dict[str, Any]) -> str:
    return str(span["tags"]["istio.canonical_service"])


def _one(spans: list[dict[str, Any]], service: str, kind: str, url_part: str = "") -> dict[str, Any]:
    found = [s for s in spans if _service(s) == service and s["kind"] == kind
             and url_part in s["tags"]["http.url"]]
    assert len(found) == 1, (service, kind, url_part, [(_service(s), s["kind"], s["name"]) for s in spans])
    return found[0]


async def test_one_request_is_one_trace_with_the_delay_on_the_faulted_hop(bookinfo: RunningMesh) -> None:
    mesh = bookinfo
    request_id = str(uuid.uuid4())
    with mesh.rules(*rule("reviews-v2.yaml"), RATINGS_DELAY):
        async with httpx.AsyncClient(timeout=30.0) as http:
            response = await http.get(f"{mesh.ingress}/productpage",
                                      headers={"x-request-id": request_id, "x-client-trace-id": "lab-08"})
        assert response.status_code == 200
        # ingress, productpage in/out x2 (details, reviews), reviews in/out, ratings in, details in
        spans = await eventually(lambda: _trace(mesh, request_id), lambda s: len(s) >= 9, seconds=15.0)
    assert len({s["traceId"] for s in spans}) == 1
    ingress = _one(spans, "istio-ingressgateway", "CLIENT")
    page_in = _one(spans, "productpage", "SERVER")
    page_to_reviews = _one(spans, "productpage", "CLIENT", "reviews")
    reviews_in = _one(spans, "reviews", "SERVER")
    reviews_to_ratings = _one(spans, "reviews", "CLIENT", "ratings")
    ratings_in = _one(spans, "ratings", "SERVER")
    assert "parentId" not in ingress  # the root: the request came without trace context
    chain = [ingress, page_in, page_to_reviews, reviews_in, reviews_to_ratings, ratings_in]
    for parent, child in itertools.pairwise(chain):
        assert child["parentId"] == parent["id"], (parent["name"], child["name"])
        # a child starts after its parent and ends before it (1 ms of clock skew between processes)
        assert child["timestamp"] >= parent["timestamp"] - 1000
        assert child["timestamp"] + child["duration"] <= parent["timestamp"] + parent["duration"] + 1000
    details_in = _one(spans, "details", "SERVER")
    assert details_in["parentId"] == _one(spans, "productpage", "CLIENT", "details")["id"]
    # The fault fires in reviews' sidecar before the request leaves: its client span holds the delay,
    # ratings' server span starts only after it, and is not slowed down itself.
    assert reviews_to_ratings["duration"] >= DELAY_S * 1e6
    assert "DI" in reviews_to_ratings["tags"]["response_flags"]
    assert ratings_in["timestamp"] - reviews_to_ratings["timestamp"] >= DELAY_S * 1e6 - 1000
    assert ratings_in["duration"] < reviews_to_ratings["duration"] - DELAY_S * 1e6 + 1e5
    for span in spans:
        tags = span["tags"]
        assert tags["guid:x-request-id"] == request_id
        assert tags["http.status_code"] == "200"
        assert int(tags["response_size"]) > 0
    assert reviews_in["tags"]["connection_security_policy"] == "mutual_tls"
    assert reviews_to_ratings["tags"]["upstream_cluster"].startswith("ratings")
    # The sidecar's own span counters (admin /stats): shipped, nothing dropped.
    async with httpx.AsyncClient(timeout=10.0) as http:
        admin = await http.get(f"http://127.0.0.1:{mesh.workload('ratings-v1-0')['admin_port']}/stats")
    counters = admin.json()["tracing"]
    assert counters["shipped"] >= 1 and counters["dropped"] == 0 and counters["capacity"] == 4096
    # The queries find it: by request id, by service, by minimum duration.
    found = mesh.client.request("GET", "traces", query={"service": "ratings", "min_duration": "1s"})
    assert spans[0]["traceId"] in [t["trace_id"] for t in found["traces"]]
    otlp = mesh.client.request("GET", f"traces/{spans[0]['traceId']}/otlp")
    assert sum(len(r["scopeSpans"][0]["spans"]) for r in otlp["resourceSpans"]) == len(spans)
    # The same trace in the terminal (rich waterfall) and in a notebook (plotly waterfall).
    shown = meshkit(mesh.home, mesh.base, "trace", request_id)
    assert shown.returncode == 0, shown.stderr
    assert f"trace {spans[0]['traceId']}" in shown.stdout
    delayed = next(line for line in shown.stdout.splitlines() if "reviews → ratings" in line)
    assert " DI " in delayed and "█" in delayed
    listed = meshkit(mesh.home, mesh.base, "traces", "--service", "ratings", "--min-duration", "1s")
    assert listed.returncode == 0 and spans[0]["traceId"] in listed.stdout, listed.stdout + listed.stderr
    # explain names the rule that delayed the request, and the rules the other hops took.
    explained = Mesh(str(mesh.status["control"]), local=mesh.mesh).explain(request_id)
    hops = {(h["from"], h["to"]): h for h in explained["hops"]}
    delayed_hop = hops[("reviews", "ratings")]
    assert delayed_hop["route"] == "VirtualService/default/ratings#http[0]" and delayed_hop["subset"] == "v1"
    assert delayed_hop["fault"] == f"delay {DELAY_S * 1000:.0f} ms for 100%" and delayed_hop["fault_fired"]
    assert [w["flag"] for w in delayed_hop["flags_explained"]] == ["DI"] and delayed_hop["mtls"]
    assert hops[("productpage", "reviews")]["route"] == "VirtualService/default/reviews#http[0]"
    assert hops[("productpage", "reviews")]["subset"] == "v2"
    assert hops[("productpage", "details")]["route"] == "default"  # no VirtualService for details
    assert explained["verdict"].startswith("reviews → ratings answered 200: DI: delay injected")
    told = meshkit(mesh.home, mesh.base, "explain", request_id)
    assert told.returncode == 0, told.stderr
    assert "route     VirtualService/default/ratings#http[0]" in told.stdout, told.stdout
    figure = charts.trace(Mesh(str(mesh.status["control"]), local=mesh.mesh), request_id)
    bars = figure.data[0]
    assert len(bars.y) == len(spans)
    slowest = max(range(len(spans)), key=lambda i: bars.x[i] if "ratings" in bars.hovertext[i] else 0)
    assert "reviews" in figure.layout.yaxis.ticktext[slowest] and bars.marker.color[slowest] == charts.FLAGGED


def _telemetry(percent: float) -> dict[str, Any]:
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"name": "mesh-default", "namespace": "istio-system"},
            "spec": {"tracing": [{"randomSamplingPercentage": percent}]}}


async def _traced(mesh: RunningMesh, n: int, headers: dict[str, str] | None = None) -> list[str]:
    """Send ``n`` requests through the ingress; their request ids."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    async with httpx.AsyncClient(timeout=30.0) as http:
        for request_id in ids:
            response = await http.get(f"{mesh.ingress}/productpage",
                                      headers={"x-request-id": request_id, **(headers or {})})
            assert response.status_code == 200
    return ids


async def test_the_telemetry_api_sets_the_mesh_sampling_rate(bookinfo: RunningMesh) -> None:
    mesh = bookinfo
    with mesh.rules(_telemetry(100)):
        every = await _traced(mesh, 5)
        found = await eventually(lambda: [i for i in every if len(_trace(mesh, i)) >= 6],
                                 lambda f: len(f) == 5, seconds=15.0)
        assert found == every
    with mesh.rules(_telemetry(0)):
        unsampled = await _traced(mesh, 5)
        (forced,) = await _traced(mesh, 1, {"x-client-trace-id": "forced"})
        await eventually(lambda: _trace(mesh, forced), lambda s: len(s) >= 6, seconds=15.0)
        # the forced request's spans arrived, and were shipped after the unsampled ones would have been
        assert [i for i in unsampled if _trace(mesh, i)] == []


async def test_explain_dry_run_names_the_rule_from_each_caller(bookinfo: RunningMesh) -> None:
    mesh = bookinfo
    with mesh.rules(*sample("virtual-service-reviews-test-v2.yaml")):
        told = meshkit(mesh.home, mesh.base, "explain", "--host", "reviews", "--header", "end-user=jason")
        other = meshkit(mesh.home, mesh.base, "explain", "--host", "reviews", "--from", "productpage")
    assert told.returncode == 0, told.stderr
    assert ("from productpage-v1.default: VirtualService/default/reviews#http[0] → reviews.default|v2 (100)"
            in told.stdout), told.stdout
    assert other.returncode == 0, other.stderr
    assert other.stdout.splitlines()[2] == (
        "from productpage-v1.default: VirtualService/default/reviews#http[1] → reviews.default|v1 (100)")


RATINGS_ABORT = {**RATINGS_DELAY, "spec": {
    "hosts": ["ratings"],
    "http": [{"fault": {"abort": {"percentage": {"value": 100}, "httpStatus": 500}},
              "route": [{"destination": {"host": "ratings", "subset": "v1"}}]}],
}}


async def test_explain_names_an_abort_and_a_missing_route(bookinfo: RunningMesh) -> None:
    mesh = bookinfo
    with mesh.rules(*rule("reviews-v2.yaml"), RATINGS_ABORT):
        (aborted,) = await _traced(mesh, 1, {"x-client-trace-id": "abort"})  # the page still answers 200
        await eventually(lambda: _trace(mesh, aborted), lambda s: len(s) >= 7, seconds=15.0)
    lost = str(uuid.uuid4())
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.get(f"{mesh.ingress}/nowhere",  # no rule of the gateway's VirtualService
                                  headers={"x-request-id": lost, "x-client-trace-id": "nr"})
    assert response.status_code == 404
    await eventually(lambda: _trace(mesh, lost), lambda s: len(s) >= 1, seconds=15.0)
    client = Mesh(str(mesh.status["control"]), local=mesh.mesh)
    answer = client.explain(aborted)
    hop = next(h for h in answer["hops"] if (h["from"], h["to"]) == ("reviews", "ratings"))
    assert (hop["status"], hop["flags"], hop["reached_server"]) == (500, "FI", False)
    assert hop["route"] == "VirtualService/default/ratings#http[0]"
    assert hop["fault"] == "abort 500 for 100%" and hop["fault_fired"]
    assert answer["verdict"].startswith("reviews → ratings answered 500: FI: fault injected")
    # each hop carries its sidecars' access-log lines for this x-request-id
    line = hop["access_log"]["caller"]
    assert line is not None, answer.get("access_log_errors")
    assert (line["request_id"], line["status"], line["response_flags"], line["direction"]) == \
        (aborted, 500, "FI", "outbound")
    assert line["upstream_cluster"] == hop["cluster"]
    assert hop["access_log"]["server"] is None  # the fault fired before it left reviews' sidecar
    reached = next(h for h in answer["hops"] if (h["from"], h["to"]) == ("productpage", "reviews"))
    both = reached["access_log"]
    assert both["caller"]["direction"] == "outbound" and both["server"]["direction"] == "inbound", both
    assert both["caller"]["request_id"] == both["server"]["request_id"] == aborted
    assert both["caller"]["upstream_cluster"] == reached["cluster"]
    assert answer["access_log_errors"] == {}
    told = meshkit(mesh.home, mesh.base, "explain", aborted).stdout
    assert "caller log" in told and "server log" in told and '" 500 FI ' in told, told
    answer = client.explain(lost)
    (hop,) = answer["hops"]
    assert (hop["from"], hop["status"], hop["flags"]) == ("istio-ingressgateway", 404, "NR")
    assert hop["route"] is None and not hop["reached_server"]
    assert answer["verdict"].startswith("istio-ingressgateway → ")
    assert "answered 404: NR: no route" in answer["verdict"]
    gateway_line = hop["access_log"]["caller"]
    assert (gateway_line["status"], gateway_line["response_flags"], gateway_line["path"]) == \
        (404, "NR", "/nowhere")
