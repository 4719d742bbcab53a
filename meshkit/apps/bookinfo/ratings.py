"""Bookinfo's ratings service: ``GET /ratings/{id}`` answers the stars each reviewer gave.

``POST /ratings/{id}`` with a JSON object ``{"Reviewer1": 1..5, ...}`` changes the ratings
of that product in this instance (as the original Node.js service allows).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshkit.apps.application import new_application
from meshkit.apps.bookinfo.catalog import DEFAULT_RATINGS, product_id_of
from meshkit.apps.identity import Workload, reply

RATINGS = web.AppKey("ratings", dict[int, dict[str, int]])


async def get_ratings(request: web.Request) -> web.Response:
    product_id = product_id_of(request)
    stars = request.app[RATINGS].get(product_id, DEFAULT_RATINGS)
    return reply(request, {"id": product_id, "ratings": dict(stars)})


def _valid_ratings(request: web.Request, body: Any) -> dict[str, int]:
    if not isinstance(body, dict) or not body:
        raise web.HTTPBadRequest(
            text=f"{request.path}: body must be a JSON object of reviewer to stars, e.g. {{\"Reviewer1\": 5}}"
        )
    for reviewer, stars in body.items():
        if not isinstance(stars, int) or isinstance(stars, bool) or not 1 <= stars <= 5:
            raise web.HTTPBadRequest(
                text=f"{request.path}: field {reviewer!r} must be a whole number of stars 1-5, got {stars!r}"
            )
    return {str(k): int(v) for k, v in body.items()}


async def post_ratings(request: web.Request) -> web.Response:
    product_id = product_id_of(request)
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=f"{request.path}: body is not valid JSON") from None
    new = _valid_ratings(request, body)
    stored = request.app[RATINGS]
    stored[product_id] = {**stored.get(product_id, DEFAULT_RATINGS), **new}
    return reply(request, {"id": product_id, "ratings": dict(stored[product_id])})


def build(workload: Workload, *, seed: int | None = None) -> web.Application:
    app = new_application(workload, seed=seed)
    app[RATINGS] = {}
    app.router.add_get("/ratings/{id}", get_ratings)
    app.router.add_post("/ratings/{id}", post_ratings)
    return app
