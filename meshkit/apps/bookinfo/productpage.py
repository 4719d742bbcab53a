"""Bookinfo's productpage: the HTML page, the JSON API, login/logout.

It calls details (3 s timeout, no retry) and then reviews (3 s timeout, tried twice), as
Istio's productpage.py does, so the fault-injection lesson reproduces: a 7 s delay on
ratings for ``jason`` makes reviews v2 wait, productpage gives up after 2 x 3 s and shows
"Sorry, product reviews are currently unavailable for this book.".

Signing in (``POST /login`` with ``username``, any name as on Istio's page: "John Doe" too)
sets a ``user`` cookie; while it is set, every call productpage makes carries
``end-user: <user>``, the header Istio's request-routing lesson matches on. As Istio's
productpage, the session is the only source of ``end-user``: one sent to productpage from
outside is not passed on (it logs nobody in); reviews and the others pass on what they get.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meshkit.apps.application import new_application
from meshkit.apps.bookinfo import catalog
from meshkit.apps.bookinfo.page import render_index, render_product_page
from meshkit.apps.identity import WORKLOAD, Workload, error_reply, raw_json
from meshkit.apps.outbound import SERVICE_CLIENT, Answer, ProxySettings, add_service_client
from meshkit.apps.propagation import forwarded_headers

DETAILS_TIMEOUT_S = 3.0
REVIEWS_TIMEOUT_S = 3.0
REVIEWS_ATTEMPTS = 2
RATINGS_TIMEOUT_S = 3.0
USER_COOKIE = "user"
# Any name a person types (Istio's page takes anything): printable ASCII, because it travels as a
# header value and in a cookie; surrounding spaces are dropped.
USERNAME = re.compile(r"[\x20-\x7e]{1,100}")


@dataclass(frozen=True)
class Fetched:
    """A backend's JSON answer, or the error productpage shows in its place."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200


def signed_in_user(request: web.Request) -> str | None:
    user = request.cookies.get(USER_COOKIE, "").strip()
    return user if USERNAME.fullmatch(user) else None


def _outbound_headers(request: web.Request) -> dict[str, str]:
    headers = forwarded_headers(request.headers)
    headers.pop("end-user", None)  # only the session says who is signed in (Istio's productpage)
    user = signed_in_user(request)
    if user is not None:
        headers["end-user"] = user
    return headers


def _as_object(answer: Answer) -> dict[str, Any] | None:
    if not answer.ok:
        return None
    try:
        body = answer.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _fetch(
    request: web.Request, path: str, *, timeout_s: float, attempts: int, unavailable: str
) -> Fetched:
    """GET ``path`` on a Bookinfo service, ``attempts`` times at most; any non-200 counts as failed."""
    workload = request.app[WORKLOAD]
    service = path.strip("/").split("/", 1)[0]
    url = f"http://{service}:{workload.service_port}{path}"
    headers = _outbound_headers(request)
    status = 500
    for _ in range(attempts):
        answer = await request.app[SERVICE_CLIENT].get(url, headers=headers, timeout_s=timeout_s)
        body = _as_object(answer)
        if body is not None:
            return Fetched(200, body)
        status = answer.status if answer.status and answer.status != 200 else 500
    return Fetched(status, {"error": unavailable})


async def product_details(request: web.Request, product_id: int) -> Fetched:
    return await _fetch(
        request, f"/details/{product_id}", timeout_s=DETAILS_TIMEOUT_S, attempts=1,
        unavailable=catalog.DETAILS_UNAVAILABLE,
    )


async def product_reviews(request: web.Request, product_id: int) -> Fetched:
    return await _fetch(
        request, f"/reviews/{product_id}", timeout_s=REVIEWS_TIMEOUT_S, attempts=REVIEWS_ATTEMPTS,
        unavailable=catalog.REVIEWS_UNAVAILABLE,
    )


async def product_ratings(request: web.Request, product_id: int) -> Fetched:
    return await _fetch(
        request, f"/ratings/{product_id}", timeout_s=RATINGS_TIMEOUT_S, attempts=1,
        unavailable=catalog.RATINGS_UNAVAILABLE_PRODUCTPAGE,
    )


async def index(request: web.Request) -> web.Response:
    return web.Response(text=render_index(request.app[WORKLOAD]), content_type="text/html")


async def front(request: web.Request) -> web.Response:
    """``/productpage``: details first, then reviews, in sequence as the original."""
    product = catalog.PRODUCTS[0]
    details = await product_details(request, 0)
    reviews = await product_reviews(request, 0)
    html = render_product_page(
        product=product,
        details_status=details.status,
        details=details.body,
        reviews_status=reviews.status,
        reviews=reviews.body,
        user=signed_in_user(request),
        workload=request.app[WORKLOAD],
    )
    return web.Response(text=html, content_type="text/html")


async def products(request: web.Request) -> web.Response:
    return raw_json(list(catalog.PRODUCTS))


async def product_api(request: web.Request) -> web.Response:
    fetched = await product_details(request, catalog.product_id_of(request))
    return _api_answer(request, fetched)


async def reviews_api(request: web.Request) -> web.Response:
    fetched = await product_reviews(request, catalog.product_id_of(request))
    return _api_answer(request, fetched)


async def ratings_api(request: web.Request) -> web.Response:
    fetched = await product_ratings(request, catalog.product_id_of(request))
    return _api_answer(request, fetched)


def _api_answer(request: web.Request, fetched: Fetched) -> web.Response:
    """A backend's body as is (it names the backend's pod), or productpage's own error."""
    if fetched.ok:
        return raw_json(fetched.body)
    return error_reply(request, fetched.status, fetched.body["error"])


async def _username(request: web.Request) -> str:
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="/login: body is not valid JSON") from None
        raw = body.get("username") if isinstance(body, dict) else None
    else:
        raw = (await request.post()).get("username")
    name = raw.strip() if isinstance(raw, str) else raw
    if not isinstance(name, str) or not USERNAME.fullmatch(name):
        raise web.HTTPBadRequest(
            text=f"/login: field 'username' must be 1-100 printable ASCII characters, got {raw!r}"
        )
    return name


def _back_to_page() -> web.Response:
    # the page's links and forms are relative (as Istio's productpage template): behind a path prefix
    # (jupyter-server-proxy's /proxy/<port>/, which rewrites this Location) signing in stays under it
    return web.Response(status=303, headers={"Location": "/productpage"}, text="See /productpage\n")


async def login(request: web.Request) -> web.StreamResponse:
    """Sign in as ``username`` (any password, as Bookinfo): sets the ``user`` cookie."""
    user = await _username(request)
    response = _back_to_page()
    response.set_cookie(USER_COOKIE, user, path="/", httponly=True, samesite="Lax")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = _back_to_page()
    response.del_cookie(USER_COOKIE, path="/")
    return response


def build(workload: Workload, *, proxies: ProxySettings, seed: int | None = None) -> web.Application:
    app = new_application(workload, seed=seed)
    add_service_client(app, proxies)
    app.router.add_get("/", index)
    app.router.add_get("/productpage", front)
    app.router.add_post("/login", login)
    app.router.add_get("/logout", logout)
    app.router.add_post("/logout", logout)
    app.router.add_get("/api/v1/products", products)
    app.router.add_get("/api/v1/products/{id}", product_api)
    app.router.add_get("/api/v1/products/{id}/reviews", reviews_api)
    app.router.add_get("/api/v1/products/{id}/ratings", ratings_api)
    return app
