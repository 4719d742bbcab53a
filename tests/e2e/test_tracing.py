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
from tests.e2e.mesh import RunningMesh, rule
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
    # The queries find it: by request id, by service, by minimum duration.
    found = mesh.client.request("GET", "traces", query={"service": "ratings", "min_duration": "1s"})
    assert spans[0]["traceId"] in [t["trace_id"] for t in found["traces"]]
    otlp = mesh.client.request("GET", f"traces/{spans[0]['traceId']}/otlp")
    assert sum(len(r["scopeSpans"][0]["spans"]) for r in otlp["resourceSpans"]) == len(spans)
