"""Envoy's per-cluster counters on the admin pages, as Istio's tasks read them (issue 13)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot, simple_route

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


async def _admin(session: aiohttp.ClientSession, port: int, path: str) -> str:
    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_circuit_breaking_task_finds_pending_overflow(
    echo_app: EchoApp, start_proxy: StartProxy
) -> None:
    """Istio's circuit-breaking task: `pilot-agent request GET stats | grep httpbin | grep pending`."""
    snapshot = make_snapshot(echo_app.port)
    pool = {"max_connections": 1, "http1_max_pending_requests": 1}
    snapshot["clusters"]["reviews|"]["connection_pool"] = pool
    proxy = await start_proxy(snapshot)
    admin = proxy.ports["admin"]
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{proxy.ports['outbound']}/slow/300"

        async def call() -> tuple[int, str]:
            async with session.get(url, headers={"Host": "reviews"}) as resp:
                await resp.read()
                return resp.status, resp.headers.get("x-envoy-overloaded", "")

        results = await asyncio.gather(*(call() for _ in range(4)))
        assert sorted(results) == [(200, ""), (200, ""), (503, "true"), (503, "true")]
        text = await _admin(session, admin, "/stats?format=text")
        pending = [line for line in text.splitlines() if "reviews" in line and "pending" in line]
        assert f"cluster.{REVIEWS}.upstream_rq_pending_overflow: 2" in pending
        assert f"cluster.{REVIEWS}.upstream_rq_pending_active: 0" in pending
        assert json.loads(await _admin(session, admin, "/stats"))["cluster"][
            f"cluster.{REVIEWS}.upstream_rq_pending_overflow"
        ] == 2
        prometheus = await _admin(session, admin, "/stats/prometheus")
        families = {f.name: f for f in text_string_to_metric_families(prometheus)}
        samples = {
            (s.name, s.labels["cluster_name"]): s.value
            for name in ("envoy_cluster_upstream_rq_pending_overflow", "envoy_cluster_upstream_cx_active")
            for s in families[name].samples
        }
        assert samples[("envoy_cluster_upstream_rq_pending_overflow_total", REVIEWS)] == 2
        assert samples[("envoy_cluster_upstream_cx_active", REVIEWS)] == 1  # the kept-alive connection
        assert ("envoy_cluster_upstream_cx_active", "inbound|9080||") in samples


async def test_retry_and_timeout_counters(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    route = simple_route("reviews|", retries={"attempts": 2, "per_try_timeout_ms": None, "retry_on": ["5xx"],
                                               "retriable_status_codes": []})
    slow = {**simple_route("reviews|"), "name": "slow", "timeout_ms": 100,
            "match": [{"uri": {"prefix": "/slow"}}]}
    proxy = await start_proxy(make_snapshot(echo_app.port, routes=[slow, route]))
    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{proxy.ports['outbound']}"
        async with session.get(f"{base}/status/503", headers={"Host": "reviews"}) as resp:
            assert resp.status == 503
        async with session.get(f"{base}/slow/2000", headers={"Host": "reviews"}) as resp:
            assert resp.status == 504
        text = await _admin(session, proxy.ports["admin"], "/stats?format=text")
    assert f"cluster.{REVIEWS}.upstream_rq_retry: 2" in text
    assert f"cluster.{REVIEWS}.upstream_rq_retry_limit_exceeded: 1" in text
    assert f"cluster.{REVIEWS}.upstream_rq_timeout: 1" in text
    assert f"cluster.{REVIEWS}.outlier_detection_ejections_active: 0" in text


async def test_upstream_rq_timeout_header_is_honoured_as_envoy(
    echo_app: EchoApp, start_proxy: StartProxy
) -> None:
    """x-envoy-upstream-rq-timeout-ms from the app overrides the route timeout (0: none) and is not
    forwarded."""
    timed = {**simple_route("reviews|"), "name": "timed", "timeout_ms": 100,
             "match": [{"headers": {"x-route": {"exact": "timed"}}}]}
    proxy = await start_proxy(make_snapshot(echo_app.port, routes=[timed, simple_route("reviews|")]))
    base = f"http://127.0.0.1:{proxy.ports['outbound']}"

    async def get(path: str, value: str | None) -> tuple[int, str]:
        route, _, path = path.rpartition("|")
        headers = {"Host": "reviews", "x-route": route}
        if value is not None:
            headers["x-envoy-upstream-rq-timeout-ms"] = value
        async with aiohttp.ClientSession() as session, session.get(base + path, headers=headers) as resp:
            return resp.status, await resp.text()

    assert (await get("/slow/1500", "100"))[0] == 504  # a route without timeout gets one
    assert (await get("/slow/300", None))[0] == 200
    assert (await get("timed|/slow/300", None))[0] == 504  # the route's 100 ms
    assert (await get("timed|/slow/300", "5000"))[0] == 200  # the header wins
    assert (await get("timed|/slow/300", "0"))[0] == 200  # 0 disables the timeout
    assert (await get("timed|/slow/300", "soon"))[0] == 504  # not a number: ignored, as Envoy does
    status, body = await get("/echo", "5000")
    assert status == 200 and "x-envoy-upstream-rq-timeout-ms" not in body  # never forwarded
