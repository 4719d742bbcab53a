"""Bookinfo end to end: real app processes calling each other through a stand-in sidecar."""

from __future__ import annotations

import time
from collections.abc import Iterator

import aiohttp
import pytest

from meshkit.apps.bookinfo.catalog import (
    DETAILS_UNAVAILABLE,
    RATINGS_UNAVAILABLE_REVIEWS,
    REVIEWS_UNAVAILABLE,
)
from tests.apps.conftest import SERVICE_PORT, Bookinfo

REVIEWS_HOST = f"reviews:{SERVICE_PORT}"
RATINGS_HOST = f"ratings:{SERVICE_PORT}"
DETAILS_HOST = f"details:{SERVICE_PORT}"
TRACE = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE",
    "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
    "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
    "x-b3-spanid": "e457b5a2e4d86bd1",
    "x-b3-parentspanid": "05e3ac9a4f6e3b90",
    "x-b3-sampled": "1",
    "x-b3-flags": "0",
    "x-ot-span-context": "ot-context",
    "user-agent": "bookinfo-test/1.0",
}


@pytest.fixture(autouse=True)
def clean_faults(bookinfo: Bookinfo) -> Iterator[None]:
    yield
    for app in bookinfo.all():
        app.admin("reset")


async def _get(url: str, **headers: str) -> tuple[int, str, float]:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        return answer.status, await answer.text(), time.monotonic() - started


async def _json(url: str, **headers: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        return answer.status, await answer.json()


async def test_productpage_shows_details_and_reviews(bookinfo: Bookinfo) -> None:
    with bookinfo.route_reviews("v2"):
        status, html, _ = await _get(f"{bookinfo.productpage.url}/productpage", **{"x-request-id": "page-1"})
    assert status == 200
    assert "The Comedy of Errors" in html
    assert "<dt>ISBN-13:</dt><dd>123-1234567890</dd>" in html
    assert "An extremely entertaining play by Shakespeare" in html
    assert 'data-served-by="reviews-v2-0"' in html and "<u>reviews-v2-0</u>" in html
    assert 'id="productpage-pod">productpage-v1-0<' in html
    # Sequential as the original: details, then reviews, which then called ratings.
    hosts = [s.host for s in bookinfo.proxy.seen(request_id="page-1")]
    assert hosts == [DETAILS_HOST, REVIEWS_HOST, RATINGS_HOST]


@pytest.mark.parametrize(
    ("version", "colour"), [("v1", None), ("v2", "black"), ("v3", "red")]
)
async def test_reviews_versions(bookinfo: Bookinfo, version: str, colour: str | None) -> None:
    request_id = f"versions-{version}"
    with bookinfo.route_reviews(version):
        status, body = await _json(
            f"{bookinfo.productpage.url}/api/v1/products/0/reviews", **{"x-request-id": request_id}
        )
        _, html, _ = await _get(f"{bookinfo.productpage.url}/productpage")
    assert status == 200 and isinstance(body, dict)
    assert body["podname"] == f"reviews-{version}-0" and body["version"] == version
    reviews = body["reviews"]
    assert [r["reviewer"] for r in reviews] == ["Reviewer1", "Reviewer2"]
    called_ratings = bool(bookinfo.proxy.seen(host=RATINGS_HOST, request_id=request_id))
    if colour is None:
        assert all("rating" not in r for r in reviews)
        assert not called_ratings, "reviews v1 must not call ratings"
        assert 'class="stars"' not in html
    else:
        assert [r["rating"] for r in reviews] == [
            {"stars": 5, "color": colour}, {"stars": 4, "color": colour}
        ]
        assert called_ratings
        assert f'data-stars="5" data-color="{colour}"' in html
        assert f'data-stars="4" data-color="{colour}"' in html


async def test_trace_and_request_headers_reach_ratings(bookinfo: Bookinfo) -> None:
    headers = {"x-request-id": "propagate-1", **TRACE}
    with bookinfo.route_reviews("v2"):
        status, _, _ = await _get(f"{bookinfo.productpage.url}/productpage", **headers)
    assert status == 200
    seen = bookinfo.proxy.seen(request_id="propagate-1")
    assert {s.host for s in seen} == {DETAILS_HOST, REVIEWS_HOST, RATINGS_HOST}
    for hop in seen:
        for name, value in headers.items():
            assert hop.headers.get(name) == value, f"{hop.host} got {name}={hop.headers.get(name)!r}"
        assert hop.path in ("/details/0", "/reviews/0", "/ratings/0")


async def test_login_sends_end_user_to_reviews_and_ratings(bookinfo: Bookinfo) -> None:
    url = bookinfo.productpage.url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(f"{url}/login", data={"username": "jason", "passwd": "x"},
                                allow_redirects=False) as answer:
            assert answer.status == 303
            assert answer.headers["Location"] == "/productpage"
            assert answer.cookies["user"].value == "jason"
        with bookinfo.route_reviews("v2"):
            async with session.get(f"{url}/productpage", headers={"x-request-id": "login-1"}) as answer:
                html = await answer.text()
        assert 'Signed in as <b id="user">jason</b>' in html
        for host in (REVIEWS_HOST, RATINGS_HOST, DETAILS_HOST):
            (hop,) = bookinfo.proxy.seen(host=host, request_id="login-1")
            assert hop.headers.get("end-user") == "jason", host
        async with session.get(f"{url}/logout", allow_redirects=False) as answer:
            assert answer.status == 303
        async with session.get(f"{url}/productpage", headers={"x-request-id": "logout-1"}) as answer:
            html = await answer.text()
        assert "Signed in as" not in html and 'name="username"' in html
        (hop,) = bookinfo.proxy.seen(host=REVIEWS_HOST, request_id="logout-1")
        assert "end-user" not in hop.headers


async def test_any_name_signs_in_as_on_istio_s_page(bookinfo: Bookinfo) -> None:
    url = bookinfo.productpage.url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(f"{url}/login", data={"username": " John Doe ", "passwd": ""},
                                allow_redirects=False) as answer:
            assert answer.status == 303, await answer.text()
        with bookinfo.route_reviews("v2"):
            async with session.get(f"{url}/productpage", headers={"x-request-id": "login-jd"}) as answer:
                html = await answer.text()
        assert 'Signed in as <b id="user">John Doe</b>' in html
        (hop,) = bookinfo.proxy.seen(host=REVIEWS_HOST, request_id="login-jd")
        assert hop.headers.get("end-user") == "John Doe"


async def test_an_end_user_header_from_outside_logs_nobody_in(bookinfo: Bookinfo) -> None:
    """Istio's productpage takes ``end-user`` from its session only: a client cannot claim to be
    jason with a header; signed in, the session's name wins over the header."""
    url = f"{bookinfo.productpage.url}/productpage"
    with bookinfo.route_reviews("v2"):
        status, _, _ = await _get(url, **{"x-request-id": "claim-1", "end-user": "jason"})
        assert status == 200
        async with aiohttp.ClientSession(cookies={"user": "kim"}) as session, session.get(
                url, headers={"x-request-id": "claim-2", "end-user": "jason"}) as answer:
            assert answer.status == 200
    (anonymous,) = bookinfo.proxy.seen(host=REVIEWS_HOST, request_id="claim-1")
    assert "end-user" not in anonymous.headers
    (signed_in,) = bookinfo.proxy.seen(host=REVIEWS_HOST, request_id="claim-2")
    assert signed_in.headers.get("end-user") == "kim"


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\there", "caf\u00e9"])
async def test_login_rejects_a_name_that_cannot_travel_as_a_header(bookinfo: Bookinfo, name: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        f"{bookinfo.productpage.url}/login", data={"username": name}, allow_redirects=False
    ) as answer:
        body = await answer.json()
    assert answer.status == 400
    assert "/login" in body["error"] and "'username'" in body["error"]


async def test_slow_ratings_makes_productpage_give_up_after_two_tries_of_three_seconds(
    bookinfo: Bookinfo,
) -> None:
    """Istio's fault-injection lesson: reviews v2 waits for ratings (10 s budget), productpage does not."""
    bookinfo.ratings.admin("delay?seconds=4")
    with bookinfo.route_reviews("v2"):
        status, html, elapsed = await _get(
            f"{bookinfo.productpage.url}/productpage", **{"x-request-id": "slow-1"}
        )
    assert status == 200
    assert REVIEWS_UNAVAILABLE in html
    assert "Error fetching product reviews!" in html
    assert "<dt>Type:</dt><dd>paperback</dd>" in html, "details were not affected"
    assert elapsed >= 5.9, f"two 3 s attempts should take about 6 s, took {elapsed:.1f} s"
    assert len(bookinfo.proxy.seen(host=REVIEWS_HOST, request_id="slow-1")) == 2, "one try plus ONE retry"


async def test_reviews_v3_gives_up_on_slow_ratings_after_two_and_a_half_seconds(bookinfo: Bookinfo) -> None:
    bookinfo.ratings.admin("delay?seconds=4")
    status, body = await _json(f"{bookinfo.reviews['v3'].url}/reviews/0")
    assert status == 200 and isinstance(body, dict)
    assert [r["rating"] for r in body["reviews"]] == [{"error": RATINGS_UNAVAILABLE_REVIEWS}] * 2


async def test_failing_ratings_shows_unavailable_inside_reviews(bookinfo: Bookinfo) -> None:
    bookinfo.ratings.admin("fail?rate=1&code=503")
    with bookinfo.route_reviews("v2"):
        _, html, _ = await _get(f"{bookinfo.productpage.url}/productpage")
    assert html.count(RATINGS_UNAVAILABLE_REVIEWS) == 2
    assert 'class="stars"' not in html
    assert 'data-served-by="reviews-v2-0"' in html


async def test_failing_reviews_is_retried_once_then_reported(bookinfo: Bookinfo) -> None:
    bookinfo.reviews["v2"].admin("fail?rate=1&code=503")
    with bookinfo.route_reviews("v2"):
        _, html, elapsed = await _get(
            f"{bookinfo.productpage.url}/productpage", **{"x-request-id": "fail-reviews"}
        )
        status, body = await _json(f"{bookinfo.productpage.url}/api/v1/products/0/reviews")
    assert REVIEWS_UNAVAILABLE in html
    assert len(bookinfo.proxy.seen(host=REVIEWS_HOST, request_id="fail-reviews")) == 2
    assert elapsed < 5, "fast failures must not wait for the timeout"
    assert status == 503 and isinstance(body, dict)
    assert body["error"] == REVIEWS_UNAVAILABLE and body["podname"] == "productpage-v1-0"


async def test_unreachable_details_shows_the_details_error(bookinfo: Bookinfo) -> None:
    with bookinfo.proxy.routed(DETAILS_HOST, None):
        _, html, _ = await _get(f"{bookinfo.productpage.url}/productpage")
        status, body = await _json(f"{bookinfo.productpage.url}/api/v1/products/0")
    assert DETAILS_UNAVAILABLE in html and "Error fetching product details!" in html
    assert "Book Reviews" in html, "reviews were not affected"
    assert status == 502 and isinstance(body, dict) and body["error"] == DETAILS_UNAVAILABLE


async def test_product_api(bookinfo: Bookinfo) -> None:
    url = bookinfo.productpage.url
    status, products = await _json(f"{url}/api/v1/products")
    assert status == 200 and isinstance(products, list)
    assert products[0]["id"] == 0 and products[0]["title"] == "The Comedy of Errors"
    status, details = await _json(f"{url}/api/v1/products/0")
    assert status == 200 and isinstance(details, dict)
    assert details["podname"] == "details-v1-0"
    assert details["ISBN-10"] == "1234567890" and details["author"] == "William Shakespeare"
    status, ratings = await _json(f"{url}/api/v1/products/0/ratings")
    assert status == 200 and isinstance(ratings, dict)
    assert ratings == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4},
                       "podname": "ratings-v1-0", "version": "v1"}
    status, error = await _json(f"{url}/api/v1/products/abc")
    assert status == 400 and isinstance(error, dict)
    assert "'id'" in error["error"] and "abc" in error["error"]


async def test_details_and_ratings_directly(bookinfo: Bookinfo) -> None:
    status, details = await _json(f"{bookinfo.details.url}/details/7")
    assert status == 200 and isinstance(details, dict)
    expected = {"id", "author", "year", "type", "pages", "publisher", "language", "ISBN-10", "ISBN-13",
                "podname", "version"}
    assert set(details) == expected and details["id"] == 7
    status, error = await _json(f"{bookinfo.details.url}/details/x")
    assert status == 400 and isinstance(error, dict) and "'id'" in error["error"]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{bookinfo.ratings.url}/ratings/5", json={"Reviewer1": 1}) as answer:
            assert answer.status == 200
            assert (await answer.json())["ratings"] == {"Reviewer1": 1, "Reviewer2": 4}
        async with session.post(f"{bookinfo.ratings.url}/ratings/5", json={"Reviewer1": 9}) as answer:
            assert answer.status == 400
            assert "'Reviewer1'" in (await answer.json())["error"]
    status, ratings = await _json(f"{bookinfo.ratings.url}/ratings/5")
    assert isinstance(ratings, dict) and ratings["ratings"] == {"Reviewer1": 1, "Reviewer2": 4}
