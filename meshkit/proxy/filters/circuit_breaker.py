"""Circuit breaking: the cluster's ``connection_pool`` limits, with Envoy's HTTP/1.1 semantics.

HTTP/1.1 carries one request per upstream connection (no pipelining), so ``max_connections``
caps the requests in flight to the cluster; a request that finds every connection busy waits
(FIFO) for one, and at most ``http1_max_pending_requests`` may wait. One more is turned away at
once with 503 ``... reset reason: overflow`` and flag ``UO`` (what Istio's circuit-breaking task
shows with fortio). ``max_requests`` (Istio's ``http2MaxRequests``, which Envoy applies to
HTTP/1.1 too) caps active plus pending requests. Limits that are null or 0 are unlimited.

A slot is released when the response headers are back (or the attempt failed); the state lives
in ``Cluster.traffic``, shared across snapshot swaps, so requests admitted under an old snapshot
still release their slot.
"""

from __future__ import annotations

import asyncio
import contextlib

from meshkit.proxy.balancer import ClusterTraffic
from meshkit.proxy.http import Handler, Request, Response

OVERFLOW_TEXT = "upstream connect error or disconnect/reset before headers. reset reason: overflow"


def overflow_reply() -> Response:
    response = Response.local(503, OVERFLOW_TEXT, "UO")
    response.headers.add("x-envoy-overloaded", "true")
    return response


def _release(traffic: ClusterTraffic) -> None:
    """Hand the slot to the first live waiter, or give it back."""
    pending = traffic.pending
    while pending:
        waiter = pending.popleft()
        if not waiter.done():
            waiter.set_result(None)  # the slot passes on: rq_active unchanged
            return
    traffic.rq_active -= 1


async def circuit_breaker(request: Request, call_next: Handler) -> Response:
    cluster = request.config.clusters[request.cluster]
    traffic = cluster.traffic
    max_requests = cluster.max_requests
    if max_requests is not None and traffic.rq_active + len(traffic.pending) >= max_requests:
        traffic.upstream_rq_overflow += 1
        return overflow_reply()
    limit = cluster.max_connections
    if limit is not None and (traffic.rq_active >= limit or traffic.pending):
        max_pending = cluster.max_pending_requests
        if max_pending is not None and len(traffic.pending) >= max_pending:
            traffic.upstream_rq_pending_overflow += 1
            return overflow_reply()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        traffic.pending.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                _release(traffic)  # a slot was handed to us just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    traffic.pending.remove(waiter)
            raise
    else:
        traffic.rq_active += 1
    try:
        return await call_next(request)
    finally:
        _release(traffic)
