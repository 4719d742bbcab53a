"""Istio's helloworld sample (``samples/helloworld``, image ``istio/examples-helloworld-v1|v2``).

``GET /hello`` answers ``Hello version: v1, instance: helloworld-v1-0`` as the sample's Flask app
does, so the tasks that split traffic between helloworld-v1 and v2 read the version from the
body. It calls nothing.
"""

from __future__ import annotations

from aiohttp import web

from meshkit.apps.application import new_application
from meshkit.apps.identity import WORKLOAD, Workload


async def hello(request: web.Request) -> web.Response:
    workload = request.app[WORKLOAD]
    return web.Response(text=f"Hello version: {workload.version}, instance: {workload.instance}\n")


def build(workload: Workload, *, seed: int | None = None) -> web.Application:
    app = new_application(workload, seed=seed)
    app.router.add_get("/hello", hello)
    return app
