"""Route timeout (Envoy's route ``timeout``, Istio's ``VirtualService.http[].timeout``).

The route's ``timeout_ms`` bounds everything below this filter — retries and their back-off
included — until the response headers arrive (the body then streams without it, as in Envoy).
A request from the app carrying ``x-envoy-upstream-rq-timeout-ms: N`` (Envoy's header; the
listener takes it off the request, so it is never forwarded) uses ``N`` ms instead, ``0``
meaning no timeout, as Envoy's router does; the route step then runs a chain with this filter
even for a route without a timeout. When it fires the in-flight attempt is cancelled (the
upstream connection is discarded, never reused) and the client gets 504 ``upstream request
timeout`` with flag ``UT``.

``call_with_deadline`` is the one deadline primitive of the traffic filters (the retry filter's
per-try timeout uses it too). It cancels with ``TIMEOUT_CANCEL`` as the cancellation message so
the load-balancing filter can tell an upstream timeout (which Envoy counts as a gateway error for
outlier detection) from any other cancellation, such as the client going away.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from meshkit.proxy.http import Handler, Request, Response

if TYPE_CHECKING:  # the schema's TypedDicts are types only: never loaded by a running sidecar
    from meshkit.proxy.schema import RouteDoc

TIMEOUT_CANCEL = "meshkit: upstream timeout"
TIMEOUT_TEXT = "upstream request timeout"


def is_timeout_cancel(exc: BaseException) -> bool:
    """True when ``exc`` is the cancellation ``call_with_deadline`` delivers."""
    return bool(exc.args) and exc.args[0] == TIMEOUT_CANCEL


async def call_with_deadline(handler: Handler, request: Request, seconds: float) -> Response | None:
    """``await handler(request)`` for at most ``seconds``; ``None`` when the deadline passed first."""
    task = asyncio.current_task()
    assert task is not None
    baseline = task.cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel(TIMEOUT_CANCEL)

    handle = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        if expired and task.uncancel() <= baseline:
            return None  # our own deadline, and nobody else asked to cancel meanwhile
        raise
    finally:
        handle.cancel()
    if expired:
        task.uncancel()  # the handler swallowed our cancellation and answered anyway
    return response


def timeout_reply(*flags: str) -> Response:
    return Response.local(504, TIMEOUT_TEXT, ",".join(("UT", *flags)))


def check_timeout(route: dict[str, Any], where: str) -> None:
    """Validate a route's ``timeout_ms`` (for snapshot loading); errors name the key path."""
    value = route.get("timeout_ms")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{where}.timeout_ms: expected an integer >= 0 (ms) or null, got {value!r}")


def has_timeout(route: RouteDoc) -> bool:
    """Does this route need the timeout filter (pipeline predicate)? Null and 0 mean no timeout."""
    return bool(route.get("timeout_ms"))


async def timeout(request: Request, call_next: Handler) -> Response:
    limit_ms = request.rq_timeout_ms  # x-envoy-upstream-rq-timeout-ms wins over the route's
    if limit_ms is None:
        route = request.route
        limit_ms = route.get("timeout_ms") if route is not None else None
    if not limit_ms:  # null or 0: disabled (Istio's default)
        return await call_next(request)
    response = await call_with_deadline(call_next, request, limit_ms / 1000.0)
    if response is not None:
        return response
    cluster = request.config.clusters.get(request.cluster) if request.config is not None else None
    if cluster is not None:
        cluster.traffic.upstream_rq_timeout += 1
    return timeout_reply()
