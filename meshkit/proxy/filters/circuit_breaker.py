"""Circuit breaking: the cluster's ``connection_pool`` limits, with Envoy's HTTP/1.1 semantics.

HTTP/1.1 carries one request per upstream connection (no pipelining), so ``max_connections``
caps the requests in flight to the cluster; a request that finds every connection busy waits
(FIFO) for one, and at most ``http1_max_pending_requests`` may wait. One more is turned away at
once with 503 ``... reset reason: overflow`` and flag ``UO`` (what Istio's circuit-breaking task
shows with fortio). ``max_requests`` (Istio's ``http2MaxRequests``, which Envoy applies to
HTTP/1.1 too) caps active plus pending requests. Limits that are null or 0 are unlimited.

A slot is held as long as the upstream connection is busy: until the attempt failed, or the
response body was read to its end or closed (a ``bytes`` body is complete on arrival; a streamed
one is wrapped so its end releases the slot). The state lives in ``Cluster.traffic``, shared
across snapshot swaps, so requests admitted under an old snapshot still release their slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

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
        response = await call_next(request)
    except BaseException:
        _release(traffic)
        raise
    body = response.body
    if isinstance(body, bytes):
        if traffic.pending:
            _release(traffic)
        else:
            traffic.rq_active -= 1  # _release's common case, without the call
    else:
        response.body = SlotHoldingBody(body, traffic)
    return response


class SlotHoldingBody:
    """A streamed response body that keeps its connection slot until it is read to the end or closed.

    Everything else (``length``, ``bytes_received`` ...) is delegated to the wrapped body, so the
    listener and the metrics see it as the original stream.
    """

    __slots__ = ("_body", "_traffic")

    def __init__(self, body: Any, traffic: ClusterTraffic) -> None:
        self._body = body
        self._traffic: ClusterTraffic | None = traffic

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._body, name)

    def __aiter__(self) -> SlotHoldingBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk: bytes = await self._body.__anext__()
        except BaseException:  # the end (StopAsyncIteration), a broken body, or a cancelled reader
            self._give_back()
            raise
        return chunk

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._give_back()

    def _give_back(self) -> None:
        traffic = self._traffic
        if traffic is not None:
            self._traffic = None
            _release(traffic)

    def __del__(self) -> None:
        # Safety net: a body dropped without being read or closed must not keep its slot forever.
        with contextlib.suppress(Exception):
            self._give_back()
