"""The "Gateway API" tabs of Istio's traffic tasks on the real local mesh, through real sidecars.

Istio's own files are applied unchanged (bookinfo-versions.yaml, samples/bookinfo/gateway-api/*);
the routes that exist only on istio.io's pages (jason -> v2, the 0.5 s timeout, the mirroring
route and its per-version Services) are written here exactly as the tabs show them. Evidence is
what the callers get back and the sidecars' Istio metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.cli import meshkit
from tests.e2e.mesh import RunningMesh, rule, sample, start_mesh
from tests.e2e.traffic import (
    assert_share,
    codes,
    eventually,
    flagged,
    get_many,
    get_one,
    istio_requests,
    outbound_active,
    pods,
)

REVIEWS_API = "/api/v1/products/0/reviews"
VERSIONS = sample("bookinfo-versions.yaml")
REVIEWS_V1 = sample("gateway-api-route-reviews-v1.yaml")
REVIEWS_50_V3 = sample("gateway-api-route-reviews-50-v3.yaml")
INGRESS_GATEWAY_API = sample("gateway-api-bookinfo-gateway.yaml")
INGRESS_ISTIO = sample("bookinfo-gateway.yaml")
RATINGS_DELAY_2S = rule("ratings-delay-2s.yaml")  # Istio's tab uses a VirtualService: no Gateway API fault
SPLIT_REQUESTS = 600


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# istio.io Request Routing, "Gateway API" tab: jason to v2, everybody else v1
JASON_V2 = docs("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - matches:
    - headers:
      - name: end-user
        value: jason
    backendRefs:
    - name: reviews-v2
      port: 9080
  - backendRefs:
    - name: reviews-v1
      port: 9080
""")


def reviews_to(version: str, timeout: str | None = None) -> list[dict[str, Any]]:
    """istio.io Request Timeouts, "Gateway API" tab: reviews to ``version`` (with ``timeout``)."""
    extra = f"\n    timeouts:\n      request: {timeout}" if timeout else ""
    return docs(f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - backendRefs:
    - name: reviews-{version}
      port: 9080{extra}
""")


# istio.io Mirroring, "Gateway API" tab: the per-version Services and the route mirroring to v2
HTTPBIN_MIRROR = docs("""
apiVersion: v1
kind: Service
metadata:
  name: httpbin-v1
spec:
  ports:
  - port: 80
    name: http
  selector:
    app: httpbin
    version: v1
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin-v2
spec:
  ports:
  - port: 80
    name: http
  selector:
    app: httpbin
    version: v2
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: httpbin
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: httpbin
    port: 8000
  rules:
  - filters:
    - type: RequestMirror
      requestMirror:
        backendRef:
          name: httpbin-v2
          port: 80
    backendRefs:
    - name: httpbin-v1
      port: 80
""")


async def test_request_routing_tab_every_user_to_v1_and_jason_to_v2(bookinfo: RunningMesh) -> None:
    url = f"{bookinfo.ingress}{REVIEWS_API}"
    with bookinfo.rules(*VERSIONS), bookinfo.rules(*REVIEWS_V1):
        assert pods(await get_many(url, 30)) == {"reviews-v1-0": 30}
        with bookinfo.rules(*JASON_V2):
            jason = await get_many(url, 20, cookies={"user": "jason"})
            others = await get_many(url, 20, cookies={"user": "kim"})
    assert pods(jason) == {"reviews-v2-0": 20}
    assert pods(others) == {"reviews-v1-0": 20}
    # the rules are undone: the three versions answer again
    assert len(set(pods(await get_many(url, 60)))) == 3


async def test_traffic_shifting_tab_splits_50_50(bookinfo: RunningMesh) -> None:
    with bookinfo.rules(*VERSIONS), bookinfo.rules(*REVIEWS_50_V3):
        replies = await get_many(f"{bookinfo.ingress}{REVIEWS_API}", SPLIT_REQUESTS, concurrency=16)
    assert codes(replies) == {200: SPLIT_REQUESTS}
    seen = pods(replies)
    assert set(seen) == {"reviews-v1-0", "reviews-v3-0"}, seen
    share_v1 = 100.0 * seen["reviews-v1-0"] / SPLIT_REQUESTS
    print(f"HTTPRoute 50/50 over {SPLIT_REQUESTS} requests: v1 {share_v1:.1f}%, v3 {100 - share_v1:.1f}%")
    assert_share(seen["reviews-v1-0"], SPLIT_REQUESTS, 0.5, "HTTPRoute 50/50, v1")


async def test_request_timeouts_tab_cuts_the_slow_reviews_call(bookinfo: RunningMesh) -> None:
    page = f"{bookinfo.ingress}/productpage"
    productpage = bookinfo.workload("productpage-v1-0")["admin_port"]
    reviews_v2 = bookinfo.workload("reviews-v2-0")["admin_port"]
    # the backend is the per-version Service: Istio's metrics name reviews-v2 as the destination service
    ut = {"reporter": "source", "destination_service_name": "reviews-v2", "response_code": "504"}
    with bookinfo.rules(*VERSIONS), bookinfo.rules(*RATINGS_DELAY_2S):
        with bookinfo.rules(*reviews_to("v2")):
            slow = await get_one(page)
        before = flagged(productpage, "UT", **ut)
        with bookinfo.rules(*reviews_to("v2", "500ms")):
            cut = await get_one(page)
        after = flagged(productpage, "UT", **ut)
        assert await eventually(lambda: outbound_active(reviews_v2), lambda n: n == 0) == 0
    assert slow.status == 200 and 'data-version="v2"' in slow.body and slow.seconds >= 1.9
    assert cut.status == 200 and "Error fetching product reviews!" in cut.body
    assert cut.seconds < slow.seconds
    assert after - before == 2  # productpage's two tries, each cut by its sidecar: 504 UT


async def test_dangling_refs_are_named_in_warnings_and_status_and_lose_nothing(bookinfo: RunningMesh) -> None:
    url = f"{bookinfo.ingress}{REVIEWS_API}"
    dangling = docs("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: ratings-typo
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: ratingz
  rules:
  - backendRefs:
    - name: ratings-v9
      port: 9080
""")
    with bookinfo.rules(*VERSIONS), bookinfo.rules(*REVIEWS_V1):
        result = bookinfo.client.apply(dangling)
        try:
            found = {(w["code"], w["field"]) for w in result["warnings"]}
            assert ("MK0410", "spec.parentRefs[0].name") in found, result["warnings"]
            assert ("MK0411", "spec.rules[0].backendRefs[0].name") in found, result["warnings"]
            (doc,) = docs(bookinfo.client.get("HTTPRoute", "ratings-typo", "default", "yaml"))
            conditions = {c["type"]: c for c in doc["status"]["parents"][0]["conditions"]}
            assert (conditions["Accepted"]["status"], conditions["Accepted"]["reason"]) == (
                "False", "NoMatchingParent")
            assert (conditions["ResolvedRefs"]["status"], conditions["ResolvedRefs"]["reason"]) == (
                "False", "BackendNotFound")
            # what a learner types: `meshkit get httproute NAME -o yaml` (a real CLI process)
            shown = meshkit(bookinfo.home, bookinfo.base, "get", "httproute", "ratings-typo", "-o", "yaml")
            assert shown.returncode == 0, shown.stderr
            assert "reason: BackendNotFound" in shown.stdout and "ratings-v9" in shown.stdout
            table = meshkit(bookinfo.home, bookinfo.base, "get", "httproutes")
            assert "ratings-typo" in table.stdout and "HOSTNAMES" in table.stdout, table.stdout + table.stderr
            (good,) = docs(bookinfo.client.get("HTTPRoute", "reviews", "default", "yaml"))
            assert [c["status"] for c in good["status"]["parents"][0]["conditions"]] == ["True", "True"]
            bookinfo.wait_synced()
            assert pods(await get_many(url, 20)) == {"reviews-v1-0": 20}  # nothing applied was lost
        finally:
            bookinfo.client.delete_documents(dangling)


async def test_ingress_tab_gateway_api_gateway_serves_bookinfo_alone(bookinfo: RunningMesh) -> None:
    page = f"{bookinfo.ingress}/productpage"
    with bookinfo.rules(*INGRESS_GATEWAY_API):
        bookinfo.client.delete_documents(INGRESS_ISTIO)  # only the Gateway API objects bind the ingress
        try:
            bookinfo.wait_synced()
            served = await get_one(page)
            unrouted = await get_one(f"{bookinfo.ingress}/headers")
            (gateway,) = docs(bookinfo.client.get("gateways.gateway.networking.k8s.io", "bookinfo-gateway",
                                                  "default", "yaml"))
            (istio,) = [d for d in docs(bookinfo.client.get("gateways", None, "default", "yaml"))
                        if d["metadata"]["name"] == "bookinfo-gateway"] or [None]
        finally:
            bookinfo.client.apply(INGRESS_ISTIO)
    bookinfo.wait_synced()
    assert served.status == 200 and served.headers.get("x-app-podname") == "productpage-v1-0"
    assert unrouted.status == 404  # the route lists /productpage, /static, /login, /logout, /api/v1/products
    assert gateway["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert {c["type"]: c["status"] for c in gateway["status"]["conditions"]} == {
        "Accepted": "True", "Programmed": "True"}
    assert gateway["status"]["listeners"][0]["attachedRoutes"] == 1
    assert istio is None  # Istio's Gateway of the same name was deleted on its own
    assert (await get_one(page)).status == 200  # and Istio's objects serve again


@pytest.fixture(scope="module")
def httpbin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("httpbin-gwapi"), ["httpbin", "clients"]) as mesh:
        yield mesh


async def test_mirroring_tab_copies_every_request_to_v2(httpbin: RunningMesh) -> None:
    sleep = httpbin.workload("sleep-v1-0")
    v1, v2 = httpbin.workload("httpbin-v1-0"), httpbin.workload("httpbin-v2-0")
    inbound = {"reporter": "destination", "destination_service_name": "httpbin"}
    before_v1 = istio_requests(v1["admin_port"], **inbound)
    before_v2 = istio_requests(v2["admin_port"], **inbound)
    sent = 20
    with httpbin.rules(*HTTPBIN_MIRROR):
        replies = await get_many("http://httpbin:8000/headers", sent, proxy=sleep["outbound_proxy"])
        await eventually(lambda: istio_requests(v2["admin_port"], **inbound) - before_v2, lambda n: n >= sent)
    assert codes(replies) == {200: sent}
    assert pods(replies) == {"httpbin-v1-0": sent}
    assert istio_requests(v1["admin_port"], **inbound) - before_v1 == sent
    assert istio_requests(v2["admin_port"], **inbound) - before_v2 == sent
