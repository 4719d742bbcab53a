"""Circuit breaking with Envoy's HTTP/1.1 semantics: connections, pending queue, UO overflow."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from meshkit.proxy.balancer import ClusterTraffic
from meshkit.proxy.filters.circuit_breaker import OVERFLOW_TEXT, SlotHoldingBody
from meshkit.proxy.http import ConnectFailure, Handler
from meshkit.proxy.snapshot import Snapshot
from tests.waiting import async_wait_until

from .conftest import Action, cluster_spec, free_port, make_request, outbound_chain, snapshot_with

ROUTE: dict[str, Any] = {"timeout_ms": None, "fault": None, "mirror": None, "retries": None}


def _config(port: int, **pool: Any) -> Snapshot:
    return snapshot_with({"svc|": cluster_spec([port], connection_pool=pool)})


async def test_one_connection_one_pending_third_request_overflows(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(delay=0.3)
    config = _config(backend.port, max_connections=1, http1_max_pending_requests=1)
    handler = outbound_chain(send)
    responses = await asyncio.gather(*(handler(make_request(config, ROUTE)) for _ in range(3)))
    assert [r.status for r in responses] == [200, 200, 503]
    overflow = responses[2]
    assert overflow.flags == "UO" and overflow.body == OVERFLOW_TEXT.encode()
    assert overflow.headers.get("x-envoy-overloaded") == "true"
    assert backend.max_active == 1 and len(backend.seen) == 2
    traffic = config.clusters["svc|"].traffic
    assert traffic.upstream_rq_pending_overflow == 1
    assert (traffic.rq_active, len(traffic.pending)) == (0, 0)


async def test_waiting_requests_are_served_in_order_one_at_a_time(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(delay=0.05)
    config = _config(backend.port, max_connections=1, http1_max_pending_requests=10)
    handler = outbound_chain(send)
    requests = [make_request(config, ROUTE) for _ in range(5)]
    for index, request in enumerate(requests):
        request.headers.add("x-n", str(index))
    responses = await asyncio.gather(*(handler(r) for r in requests))
    assert all(r.status == 200 for r in responses)
    assert [s.headers["x-n"] for s in backend.seen] == ["0", "1", "2", "3", "4"]
    assert backend.max_active == 1


async def test_a_cancelled_waiter_gives_its_place_back(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(delay=0.3)
    config = _config(backend.port, max_connections=1, http1_max_pending_requests=1)
    handler = outbound_chain(send)
    first = asyncio.ensure_future(handler(make_request(config, ROUTE)))
    waiting = asyncio.ensure_future(handler(make_request(config, ROUTE)))
    await async_wait_until(lambda: len(config.clusters["svc|"].traffic.pending) == 1, 10, "a queued request")
    waiting.cancel()
    await asyncio.sleep(0)
    third = await asyncio.wait_for(handler(make_request(config, ROUTE)), 5)
    assert third.status == 200 and (await first).status == 200
    assert waiting.cancelled()
    assert config.clusters["svc|"].traffic.rq_active == 0


async def test_max_requests_caps_active_plus_pending(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(delay=0.3)
    config = _config(backend.port, max_requests=2)
    handler = outbound_chain(send)
    responses = await asyncio.gather(*(handler(make_request(config, ROUTE)) for _ in range(3)))
    assert sorted(r.status for r in responses) == [200, 200, 503]
    assert config.clusters["svc|"].traffic.upstream_rq_overflow == 1


async def test_no_limits_means_no_queueing(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(delay=0.2)
    config = _config(backend.port)
    handler = outbound_chain(send)
    responses = await asyncio.gather(*(handler(make_request(config, ROUTE)) for _ in range(5)))
    assert all(r.status == 200 for r in responses) and backend.max_active == 5


async def test_failed_attempts_release_their_slot(send: Handler) -> None:
    config = _config(free_port(), max_connections=1, http1_max_pending_requests=1)
    handler = outbound_chain(send)
    for _ in range(3):
        with pytest.raises(ConnectFailure):  # escapes to the local-reply filter
            await handler(make_request(config, ROUTE))
    assert config.clusters["svc|"].traffic.rq_active == 0


async def test_fortio_like_load_sees_some_overflow(backends: Any, send: Handler) -> None:
    """Istio's circuit-breaking task: 3 connections against maxConnections 1, pending 1."""
    (backend,) = await backends("b")
    backend.default = Action(delay=0.01)
    config = _config(backend.port, max_connections=1, http1_max_pending_requests=1)
    handler = outbound_chain(send)

    async def client() -> list[int]:
        return [(await handler(make_request(config, ROUTE))).status for _ in range(10)]

    results = [s for statuses in await asyncio.gather(client(), client(), client()) for s in statuses]
    assert results.count(503) >= 1 and results.count(200) >= 10
    assert backend.max_active == 1


async def test_a_streamed_response_holds_its_connection_until_read(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(body=b"x" * 2_000_000)  # far more than arrives with the headers
    config = _config(backend.port, max_connections=1, http1_max_pending_requests=5)
    handler = outbound_chain(send)
    traffic = config.clusters["svc|"].traffic
    first = await handler(make_request(config, ROUTE))
    assert not isinstance(first.body, bytes)
    assert first.body.length == len(b"x" * 2_000_000) + len(b" from b")  # delegated to the stream
    second = asyncio.ensure_future(handler(make_request(config, ROUTE)))
    await async_wait_until(lambda: len(traffic.pending) == 1, 10, "the second request to queue")
    assert not second.done()  # the connection is still busy
    received = b"".join([chunk async for chunk in first.body])
    assert len(received) == 2_000_007
    reply = await asyncio.wait_for(second, 5)
    assert reply.status == 200 and traffic.rq_active == 1
    await reply.body.aclose()  # closing without reading also gives the slot back
    assert (traffic.rq_active, len(traffic.pending), backend.max_active) == (0, 0, 1)


async def test_a_dropped_streamed_body_does_not_keep_its_slot() -> None:
    traffic = ClusterTraffic()
    traffic.rq_active = 1

    async def stream() -> Any:
        yield b"never read"

    body = SlotHoldingBody(stream(), traffic)
    assert traffic.rq_active == 1
    del body
    gc.collect()
    assert traffic.rq_active == 0
