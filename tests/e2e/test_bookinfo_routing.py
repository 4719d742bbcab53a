"""Istio's Bookinfo tasks on the real local mesh: request routing, traffic shifting, fault injection.

Every rule is Istio's own YAML from tests/config/istio_samples, applied unchanged; traffic goes
through the ingress gateway (or a workload's sidecar, like `kubectl exec ... curl`), and the
evidence is what the callers get back plus the sidecars' Istio metrics.
"""

from __future__ import annotations

import asyncio
import re
import time

from meshkit.runtime.load import LoadGenerator
from tests.e2e.mesh import RunningMesh, rule, sample
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
ALL_V1 = sample("virtual-service-all-v1.yaml")
JASON_TO_V2 = sample("virtual-service-reviews-test-v2.yaml")
SPLIT_80_20 = sample("virtual-service-reviews-80-20.yaml")
RATINGS_DELAY = sample("virtual-service-ratings-test-delay.yaml")
RATINGS_ABORT_50 = rule("ratings-abort-50.yaml")
RATINGS_DELAY_2S = rule("ratings-delay-2s.yaml")
REVIEWS_TO_V2 = rule("reviews-v2.yaml")
REVIEWS_V2_TIMEOUT = sample("virtual-service-reviews-timeout.yaml")
SPLIT_REQUESTS = 1000


def _page_version(html: str) -> str | None:
    found = re.search(r'id="reviews" data-status="200" data-served-by="[^"]+" data-version="(v\d)"', html)
    return found.group(1) if found else None


async def test_ingress_serves_productpage_with_every_reviews_version(bookinfo: RunningMesh) -> None:
    page = await get_one(f"{bookinfo.ingress}/productpage")
    assert page.status == 200, page.body[:500]
    assert page.headers.get("x-app-podname") == "productpage-v1-0"
    assert 'id="details" data-status="200"' in page.body
    assert _page_version(page.body) in ("v1", "v2", "v3")
    # No VirtualService yet: reviews is balanced over its three versions, as on Istio's first page.
    replies = await get_many(f"{bookinfo.ingress}{REVIEWS_API}", 60)
    assert codes(replies) == {200: 60}
    assert set(pods(replies)) == {"reviews-v1-0", "reviews-v2-0", "reviews-v3-0"}


async def test_route_all_traffic_to_v1(bookinfo: RunningMesh) -> None:
    with bookinfo.rules(*ALL_V1):
        replies = await get_many(f"{bookinfo.ingress}{REVIEWS_API}", 50)
        assert pods(replies) == {"reviews-v1-0": 50}
        page = await get_one(f"{bookinfo.ingress}/productpage")
        assert _page_version(page.body) == "v1"
        assert 'class="stars"' not in page.body  # v1 shows no ratings
    # Undone: the three versions answer again.
    replies = await get_many(f"{bookinfo.ingress}{REVIEWS_API}", 60)
    assert len(set(pods(replies))) == 3


async def test_weighted_80_20_split(bookinfo: RunningMesh) -> None:
    with bookinfo.rules(*SPLIT_80_20):
        replies = await get_many(f"{bookinfo.ingress}{REVIEWS_API}", SPLIT_REQUESTS, concurrency=16)
    assert codes(replies) == {200: SPLIT_REQUESTS}
    seen = pods(replies)
    assert set(seen) == {"reviews-v1-0", "reviews-v2-0"}, seen
    share_v1 = 100.0 * seen["reviews-v1-0"] / SPLIT_REQUESTS
    print(f"80/20 split over {SPLIT_REQUESTS} requests: v1 {share_v1:.1f}%, v2 {100 - share_v1:.1f}%")
    assert_share(seen["reviews-v1-0"], SPLIT_REQUESTS, 0.8, "80/20, v1")


async def test_user_jason_is_routed_to_v2(bookinfo: RunningMesh) -> None:
    url = f"{bookinfo.ingress}{REVIEWS_API}"
    with bookinfo.rules(*ALL_V1), bookinfo.rules(*JASON_TO_V2):
        jason = await get_many(url, 20, cookies={"user": "jason"})
        others = await get_many(url, 20, cookies={"user": "kim"})
        anonymous = await get_many(url, 20)
        assert pods(jason) == {"reviews-v2-0": 20}
        assert pods(others) == {"reviews-v1-0": 20}
        assert pods(anonymous) == {"reviews-v1-0": 20}
        # Signed in on the HTML page (Bookinfo's `user` cookie): black stars from v2.
        signed_in = await get_one(f"{bookinfo.ingress}/productpage", cookies={"user": "jason"})
        assert signed_in.status == 200
        assert _page_version(signed_in.body) == "v2"
        assert 'data-color="black"' in signed_in.body
        signed_out = await get_one(f"{bookinfo.ingress}/productpage")
        assert _page_version(signed_out.body) == "v1"


async def test_load_signed_in_as_jason_reaches_v2_exactly(bookinfo: RunningMesh) -> None:
    # `meshkit load --users jason:25%`: those pages carry Bookinfo's login cookie, the rest none.
    v1, v2 = (bookinfo.workload(f"reviews-{v}-0")["admin_port"] for v in ("v1", "v2"))
    inbound = {"reporter": "destination", "response_code": "200"}
    with bookinfo.rules(*ALL_V1), bookinfo.rules(*JASON_TO_V2):
        before = istio_requests(v1, **inbound), istio_requests(v2, **inbound)
        gen = LoadGenerator(f"{bookinfo.ingress}/productpage", rps=40, duration=3.0, users={"jason": 0.25})
        summary = await gen.run()
        after = istio_requests(v1, **inbound), istio_requests(v2, **inbound)
    assert summary["codes"] == {"200": summary["sent"]}
    jason = summary["users"].get("jason", 0)
    assert 0 < jason < summary["sent"]
    assert after[1] - before[1] == jason
    assert after[0] - before[0] == summary["users"]["(anonymous)"]


async def test_ratings_delay_for_jason_breaks_his_page_only(bookinfo: RunningMesh) -> None:
    page = f"{bookinfo.ingress}/productpage"
    with bookinfo.rules(*ALL_V1), bookinfo.rules(*JASON_TO_V2), bookinfo.rules(*RATINGS_DELAY):
        began = time.monotonic()
        jason_task = asyncio.ensure_future(get_one(page, cookies={"user": "jason"}))
        await asyncio.sleep(0.5)  # while jason waits, everybody else is served as usual
        others = await get_many(page, 10, concurrency=2)
        others_done = time.monotonic() - began
        jason = await jason_task
        # Reviews v2 still waits on its delayed ratings calls: let them finish (and be counted DI)
        # before the rule goes, so they do not spill into the next test.
        reviews_v2 = bookinfo.workload("reviews-v2-0")["admin_port"]
        idle = await eventually(lambda: outbound_active(reviews_v2), lambda n: n == 0, seconds=15.0)
        assert idle == 0
        assert flagged(reviews_v2, "DI", reporter="source", destination_service_name="ratings") >= 1
    print(f"7 s ratings delay: jason's page after {jason.seconds:.2f} s; "
          f"10 other pages, max {max(r.seconds for r in others):.2f} s")
    assert jason.status == 200
    assert "Error fetching product reviews!" in jason.body
    assert 'id="reviews" data-status="' in jason.body and _page_version(jason.body) is None
    # productpage tries reviews twice with a 3 s timeout each, as Istio's lesson explains.
    assert jason.seconds >= 5.5
    assert codes(others) == {200: 10}
    assert all(_page_version(r.body) == "v1" for r in others)
    assert others_done < jason.seconds  # everybody else was served while jason waited


async def test_request_timeout_cuts_a_slow_reviews_call(bookinfo: RunningMesh) -> None:
    # Istio's "Request Timeouts" task: reviews v2 waits 2 s on ratings; a 0.5 s route timeout on
    # reviews makes the page come back in about 1 s (productpage tries twice) without reviews.
    page = f"{bookinfo.ingress}/productpage"
    productpage = bookinfo.workload("productpage-v1-0")["admin_port"]
    reviews_v2 = bookinfo.workload("reviews-v2-0")["admin_port"]
    ut = {"reporter": "source", "destination_service_name": "reviews", "response_code": "504"}
    with bookinfo.rules(*ALL_V1), bookinfo.rules(*RATINGS_DELAY_2S):
        with bookinfo.rules(*REVIEWS_TO_V2):
            slow = await get_one(page)
        before = flagged(productpage, "UT", **ut)
        with bookinfo.rules(*REVIEWS_V2_TIMEOUT):
            cut = await get_one(page)
        after = flagged(productpage, "UT", **ut)
        assert await eventually(lambda: outbound_active(reviews_v2), lambda n: n == 0) == 0
    print(f"request timeout: page after {slow.seconds:.2f} s with the 2 s delay, "
          f"{cut.seconds:.2f} s with a 0.5 s timeout")
    assert slow.status == 200 and _page_version(slow.body) == "v2" and slow.seconds >= 1.9
    assert cut.status == 200 and "Error fetching product reviews!" in cut.body
    assert 0.9 <= cut.seconds < slow.seconds
    assert after - before == 2  # productpage's two tries, each cut by the sidecar: 504 UT


async def test_half_of_ratings_requests_aborted_with_flag_fi(bookinfo: RunningMesh) -> None:
    caller = bookinfo.workload("reviews-v2-0")  # reviews v2 calls ratings; send from its sidecar
    labels = {"reporter": "source", "destination_service_name": "ratings"}
    assert await eventually(lambda: outbound_active(caller["admin_port"]), lambda n: n == 0) == 0
    before_fi = istio_requests(caller["admin_port"], response_flags="FI", response_code="500", **labels)
    before_ok = istio_requests(bookinfo.workload("ratings-v1-0")["admin_port"], reporter="destination",
                               response_code="200")
    with bookinfo.rules(*RATINGS_ABORT_50):
        replies = await get_many("http://ratings:9080/ratings/0", 200, proxy=caller["outbound_proxy"])
    seen = codes(replies)
    assert set(seen) == {200, 500}, seen
    print(f"50% abort: {seen[500]} of 200 requests answered 500")
    assert 60 <= seen[500] <= 140
    assert all("fault filter abort" in r.body for r in replies if r.status == 500)
    # The caller's sidecar counted each abort with flag FI; only the others reached ratings.
    fi = istio_requests(caller["admin_port"], response_flags="FI", response_code="500", **labels)
    assert fi - before_fi == seen[500]
    ok = istio_requests(bookinfo.workload("ratings-v1-0")["admin_port"], reporter="destination",
                        response_code="200")
    assert ok - before_ok == seen[200]
    # The control plane's telemetry shows the same flag on the reviews-v2 -> ratings edge.
    def edge_flags() -> dict[str, int]:
        answer = bookinfo.client.request("GET", "telemetry", query={"window": 120, "source": "reviews-v2",
                                                                    "destination": "ratings"})
        return {k: v for e in answer["edges"] for k, v in e["flags"].items()}

    flags = await eventually(edge_flags, lambda f: f.get("FI") == seen[500])
    assert flags.get("FI") == seen[500], flags
