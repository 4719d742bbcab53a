"""Bookinfo's details service: ``GET /details/{id}`` answers the book's details as JSON."""

from __future__ import annotations

from aiohttp import web

from meshkit.apps.application import new_application
from meshkit.apps.bookinfo.catalog import book_details, product_id_of
from meshkit.apps.identity import Workload, reply


async def details(request: web.Request) -> web.Response:
    return reply(request, book_details(product_id_of(request)))


def build(workload: Workload, *, seed: int | None = None) -> web.Application:
    app = new_application(workload, seed=seed)
    app.router.add_get("/details/{id}", details)
    return app
