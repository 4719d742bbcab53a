"""Who a demo app is (app, pod name, version) and the JSON replies that say so.

Every JSON body an app produces itself carries ``podname`` and ``version``, and every
response carries the ``x-app-podname`` / ``x-app-version`` headers, so a lesson can always
tell which instance answered, even through two sidecars and a load balancer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

PODNAME_HEADER = "x-app-podname"
VERSION_HEADER = "x-app-version"


@dataclass(frozen=True)
class Workload:
    """The identity of one running app instance."""

    app: str
    """The service the app implements, e.g. ``reviews``."""
    instance: str
    """The pod name, e.g. ``reviews-v2-0``."""
    version: str
    """The version label, e.g. ``v2``."""
    service_port: int
    """The port in the URLs of the services this app calls (``http://reviews:9080/...``)."""


WORKLOAD = web.AppKey("workload", Workload)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def reply(request: web.Request, payload: dict[str, Any], status: int = 200) -> web.Response:
    """A JSON response stamped with the answering instance's ``podname`` and ``version``."""
    workload = request.app[WORKLOAD]
    body = {**payload, "podname": workload.instance, "version": workload.version}
    return web.json_response(body, status=status, dumps=_dumps)


def raw_json(payload: Any, status: int = 200) -> web.Response:
    """A JSON response passed through as is (an upstream's body keeps the upstream's podname)."""
    return web.json_response(payload, status=status, dumps=_dumps)


def error_reply(request: web.Request, status: int, message: str) -> web.Response:
    """A JSON error: ``{"error": message, "podname": ..., "version": ...}``."""
    return reply(request, {"error": message}, status)


async def stamp_identity(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: name the answering instance in two response headers."""
    workload = request.app[WORKLOAD]
    response.headers[PODNAME_HEADER] = workload.instance
    response.headers[VERSION_HEADER] = workload.version
