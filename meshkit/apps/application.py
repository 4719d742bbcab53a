"""The shape every demo app shares: health, fault knobs, JSON errors, identity headers.

An app module builds on ``new_application`` and only adds its own routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from meshkit.apps.faults import add_fault_control, fault_middleware
from meshkit.apps.identity import WORKLOAD, Workload, error_reply, reply, stamp_identity


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn aiohttp's plain-text 4xx/5xx into JSON errors naming the request (redirects pass)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if isinstance(exc, web.HTTPNotFound) and exc.text == "404: Not Found":
            message = f"no route for {request.method} {request.path}"
        elif isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
        else:
            message = exc.text or exc.reason
        return error_reply(request, exc.status, message)


async def healthz(request: web.Request) -> web.Response:
    workload = request.app[WORKLOAD]
    return reply(request, {"status": f"{workload.app} is healthy"})


def new_application(workload: Workload, *, seed: int | None = None) -> web.Application:
    """An aiohttp application with ``/healthz`` (and ``/health``), ``/admin/*`` and JSON errors."""
    app = web.Application(middlewares=[json_errors, fault_middleware])
    app[WORKLOAD] = workload
    add_fault_control(app, seed)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", healthz)
    app.on_response_prepare.append(stamp_identity)
    return app
