"""Route timeouts: 504 UT, over retries included, the attempt cancelled and reported."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from meshkit.proxy.filters.timeout import check_timeout
from meshkit.proxy.http import Handler
from tests.waiting import async_wait_until

from .conftest import Action, cluster_spec, make_request, outbound_chain, snapshot_with


def _route(timeout_ms: int | None, retries: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"timeout_ms": timeout_ms, "fault": None, "mirror": None, "retries": retries}


async def test_route_timeout_answers_504_ut_and_drops_the_upstream_connection(
    backends: Any, send: Handler
) -> None:
    (backend,) = await backends("b")
    backend.default = Action(delay=3.0)
    outlier = {"consecutive_gateway_errors": 5, "consecutive_5xx_errors": None}
    config = snapshot_with({"svc|": cluster_spec([backend.port], outlier_detection=outlier)})
    started = time.monotonic()
    response = await outbound_chain(send)(make_request(config, _route(200)))
    elapsed = time.monotonic() - started
    assert (response.status, response.flags, response.body) == (504, "UT", b"upstream request timeout")
    assert elapsed > 0.15  # the 200 ms route timeout, not the 3 s upstream (504 UT says which answered)
    await async_wait_until(lambda: backend.connections_lost == 1, 10, "the upstream connection to be dropped")
    assert send.__self__.cx_active == 0  # type: ignore[attr-defined]  # not kept in the pool
    cluster = config.clusters["svc|"]
    assert cluster.traffic.upstream_rq_timeout == 1
    endpoint = cluster.endpoints[0]
    # the timed-out attempt counts as a gateway error for outlier detection, and is no longer active
    assert (endpoint.rq_error, endpoint.consecutive_gateway_errors, endpoint.active_requests) == (1, 1, 0)
    assert cluster.traffic.rq_active == 0


async def test_route_timeout_covers_all_retries(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(503, delay=0.1)
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    response = await outbound_chain(send)(
        make_request(config, _route(600, {"attempts": 10, "retry_on": ["5xx"]}))
    )
    assert (response.status, response.flags) == (504, "UT")
    assert 2 <= len(backend.seen) <= 7
    traffic = config.clusters["svc|"].traffic
    assert traffic.rq_retry_active == 0 and traffic.rq_active == 0


async def test_route_timeout_wins_over_a_longer_per_try_timeout(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(delay=3.0)
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    route = _route(200, {"attempts": 2, "per_try_timeout_ms": 1000, "retry_on": ["5xx"]})
    response = await outbound_chain(send)(make_request(config, route))
    assert (response.status, response.flags) == (504, "UT")
    assert config.clusters["svc|"].traffic.upstream_rq_per_try_timeout == 0


@pytest.mark.parametrize("timeout_ms", [None, 0])
async def test_no_route_timeout_waits_for_the_upstream(
    backends: Any, timeout_ms: int | None, send: Handler
) -> None:
    (backend,) = await backends("b")
    backend.default = Action(delay=0.3)
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    response = await outbound_chain(send)(make_request(config, _route(timeout_ms)))
    assert response.status == 200


async def test_a_fast_answer_is_not_touched(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    response = await outbound_chain(send)(make_request(config, _route(2000)))
    assert (response.status, response.flags) == (200, "")
    # the deadline is gone: nothing cancels this task later
    await asyncio.sleep(0.05)


async def test_client_cancellation_is_not_an_upstream_error(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(delay=3.0)
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    task = asyncio.ensure_future(outbound_chain(send)(make_request(config, _route(5000))))
    await async_wait_until(lambda: len(backend.seen) == 1, 10, "the request to reach the upstream")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    endpoint = config.clusters["svc|"].endpoints[0]
    assert (endpoint.rq_error, endpoint.active_requests) == (0, 0)
    assert config.clusters["svc|"].traffic.rq_active == 0


def test_bad_timeouts_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"routes\[2\]\.timeout_ms"):
        check_timeout({"timeout_ms": "10s"}, "routes[2]")
    with pytest.raises(ValueError, match=r"routes\[2\]\.timeout_ms"):
        check_timeout({"timeout_ms": -5}, "routes[2]")
    check_timeout({"timeout_ms": None}, "routes[2]")
