"""Push over real SSE connections: snapshots on connect and on change, ACK/NACK, proxy-status, debounce."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.control.server import RunningControlPlane, run_control_plane
from tests.control.conftest import SubscriberFactory
from tests.control.resources import BOOKINFO_REVIEWS, SERVICE, endpoint, virtual_service
from tests.control.sse import Subscriber
from tests.waiting import async_wait_until

YAML = {"Content-Type": "application/yaml"}


async def register(session: aiohttp.ClientSession, url: str, *endpoints: dict[str, Any]) -> None:
    async with session.post(f"{url}/api/v1/registry/services", json=SERVICE) as response:
        assert response.status == 200, await response.text()
    for doc in endpoints:
        async with session.post(f"{url}/api/v1/registry/endpoints", json=doc) as response:
            assert response.status == 200, await response.text()


async def apply(session: aiohttp.ClientSession, url: str, text: str) -> dict[str, Any]:
    async with session.post(f"{url}/api/v1/apply", data=text, headers=YAML) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def status_of(session: aiohttp.ClientSession, url: str) -> dict[str, dict[str, Any]]:
    async with session.get(f"{url}/api/v1/proxy-status") as response:
        doc = await response.json()
    return {proxy["id"]: proxy for proxy in doc["proxies"]}


async def eventually(check: Any, within: float = 10.0) -> None:
    """Poll the coroutine function ``check`` until it is truthy."""
    await async_wait_until(check, within, getattr(check, "__name__", "the condition"), interval=0.05)


def first_route_subset(snapshot: dict[str, Any]) -> str:
    [vhost] = [v for v in snapshot["outbound"]["virtual_hosts"] if v["service"] == "reviews"]
    return str(vhost["routes"][0]["route"][0]["cluster"])


async def test_subscribers_get_their_snapshot_then_every_change(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession,
        subscribe: SubscriberFactory) -> None:
    url = control_plane.url
    await register(session, url, endpoint("reviews-v1-0"), endpoint("reviews-v2-0", "v2", 41001))
    ids = ["reviews-v1-0.default", "reviews-v2-0.default", "client-0.default"]
    subscribers = [await subscribe(proxy_id) for proxy_id in ids]
    for proxy_id, subscriber in zip(ids, subscribers, strict=True):
        first = await subscriber.next()
        assert first["node"]["id"] == proxy_id
        assert first["revision"] == 0
        assert first_route_subset(first) == "reviews.default|"
    assert subscribers[0].received[0]["node"]["version"] == "v1"
    assert subscribers[0].received[0]["inbound"]["app"] == {"address": "127.0.0.1", "port": 9080}
    assert subscribers[2].received[0]["node"]["service"] is None  # unknown id: a bare node

    result = await apply(session, url, BOOKINFO_REVIEWS)
    for subscriber in subscribers:
        second = await subscriber.next()
        assert second["revision"] == result["revision"] == 1
        assert first_route_subset(second) == "reviews.default|v1"
    assert await control_plane.control_plane.push.wait_synced(within=10)
    status = await status_of(session, url)
    assert sorted(status) == sorted(ids)
    for proxy_id, subscriber in zip(ids, subscribers, strict=True):
        assert status[proxy_id]["status"] == "SYNCED"
        assert status[proxy_id]["acked"] == status[proxy_id]["latest"] == subscriber.received[-1]["version"]
        assert status[proxy_id]["connected"] is True


async def test_nack_then_ack(control_plane: RunningControlPlane, session: aiohttp.ClientSession,
                             subscribe: SubscriberFactory) -> None:
    subscriber = await subscribe("reviews-v1-0.default", mode="nack")
    snapshot = await subscriber.next()
    status = (await status_of(session, control_plane.url))["reviews-v1-0.default"]
    assert (status["status"], status["reason"], status["acked"]) == ("NACKED", "test: refused", None)
    assert await subscriber.respond(snapshot["version"], "ACK") == 200
    status = (await status_of(session, control_plane.url))["reviews-v1-0.default"]
    assert (status["status"], status["reason"], status["acked"]) == ("SYNCED", None, snapshot["version"])


async def test_a_proxy_that_does_not_ack_the_latest_is_stale(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession,
        subscribe: SubscriberFactory) -> None:
    url = control_plane.url
    await register(session, url, endpoint("reviews-v1-0"))
    subscriber = await subscribe("reviews-v1-0.default")
    first = await subscriber.next()
    assert (await status_of(session, url))["reviews-v1-0.default"]["status"] == "SYNCED"
    subscriber.mode = "silent"
    await apply(session, url, BOOKINFO_REVIEWS)
    second = await subscriber.next()
    status = (await status_of(session, url))["reviews-v1-0.default"]
    assert (status["status"], status["acked"]) == ("STALE", first["version"])
    assert status["latest"] == second["version"]
    assert not await control_plane.control_plane.push.wait_synced(within=0.2)


async def test_a_burst_of_changes_costs_one_recompile_and_one_push(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession,
        subscribe: SubscriberFactory) -> None:
    plane = control_plane.control_plane
    await register(session, control_plane.url, endpoint("reviews-v1-0"))
    subscriber = await subscribe("client-0.default")
    await subscriber.next()
    plane.store.apply(load_resources(BOOKINFO_REVIEWS))
    await subscriber.next()
    recomputes, pushes = plane.push.stats.recomputes, plane.push.stats.pushes
    for seconds in range(1, 6):  # five accepted revisions within one event-loop tick
        plane.store.apply(load_resources(virtual_service("v2", timeout=f"{seconds}s")))
    assert plane.store.revision == 6
    latest = await subscriber.next()
    [vhost] = [v for v in latest["outbound"]["virtual_hosts"] if v["service"] == "reviews"]
    assert vhost["routes"][0]["timeout_ms"] == 5000  # the last of the burst
    assert latest["revision"] == 6
    assert await subscriber.nothing_within(0.3)
    assert plane.push.stats.recomputes - recomputes == 1
    assert plane.push.stats.pushes - pushes == 1


async def test_a_change_that_does_not_alter_a_snapshot_is_not_pushed(
        control_plane: RunningControlPlane, subscribe: SubscriberFactory) -> None:
    plane = control_plane.control_plane
    subscriber = await subscribe("client-0.default")
    await subscriber.next()
    pushes = plane.push.stats.pushes
    other_namespace_policy = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: elsewhere}
spec: {}
"""
    plane.store.apply(load_resources(other_namespace_policy))
    assert plane.store.revision == 1
    assert await subscriber.nothing_within(0.5)
    assert plane.push.stats.pushes == pushes
    assert plane.push.stats.recomputes >= 2  # it was recompiled, just not different


async def test_replicas_compile_once_and_match_compile_snapshot(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession,
        subscribe: SubscriberFactory) -> None:
    plane = control_plane.control_plane
    replicas = [endpoint(f"reviews-v1-{i}", port=41000 + i) for i in range(4)]
    await register(session, control_plane.url, *replicas)
    subscribers = [await subscribe(f"reviews-v1-{i}.default") for i in range(4)]
    for subscriber in subscribers:
        await subscriber.next()
    compiles = plane.push.stats.compiles
    plane.store.apply(load_resources(BOOKINFO_REVIEWS))
    received = [await subscriber.next() for subscriber in subscribers]
    assert plane.push.stats.compiles - compiles == 1
    assert len({snapshot["version"] for snapshot in received}) == 4  # the node id is part of the content
    for subscriber, snapshot in zip(subscribers, received, strict=True):
        node = plane.registry.node_for(subscriber.proxy_id)
        expected = compile_snapshot(plane.store.resources(), plane.registry.view(), node,
                                    revision=plane.store.revision)
        assert snapshot == expected


async def test_registry_changes_are_pushed(control_plane: RunningControlPlane, session: aiohttp.ClientSession,
                                           subscribe: SubscriberFactory) -> None:
    url = control_plane.url
    await register(session, url, endpoint("reviews-v1-0"))
    subscriber = await subscribe("client-0.default")
    first = await subscriber.next()
    assert [e["instance"] for e in first["clusters"]["reviews.default|"]["endpoints"]] == ["reviews-v1-0"]
    another = endpoint("reviews-v2-0", "v2", 41001)
    async with session.post(f"{url}/api/v1/registry/endpoints", json=another) as r:
        assert r.status == 200
    second = await subscriber.next()
    instances = [e["instance"] for e in second["clusters"]["reviews.default|"]["endpoints"]]
    assert instances == ["reviews-v1-0", "reviews-v2-0"]
    async with session.put(f"{url}/api/v1/registry/endpoints/default/reviews-v1-0/health",
                           json={"healthy": False}) as r:
        assert r.status == 200
    third = await subscriber.next()
    assert [e["healthy"] for e in third["clusters"]["reviews.default|"]["endpoints"]] == [False, True]


async def test_a_reconnect_replaces_the_old_stream_and_gets_the_full_snapshot(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession,
        subscribe: SubscriberFactory) -> None:
    old = await subscribe("client-0.default")
    first = await old.next()
    new = await subscribe("client-0.default")
    assert (await new.next())["version"] == first["version"]

    async def old_ended() -> bool:
        return old.ended

    await eventually(old_ended)
    status = (await status_of(session, control_plane.url))["client-0.default"]
    assert (status["connected"], status["status"]) == (True, "SYNCED")


async def test_a_disconnected_proxy_stays_listed(control_plane: RunningControlPlane,
                                                 session: aiohttp.ClientSession,
                                                 subscribe: SubscriberFactory) -> None:
    await register(session, control_plane.url, endpoint("reviews-v1-0"))
    subscriber = await subscribe("client-0.default")
    await subscriber.next()
    await subscriber.close()

    async def disconnected() -> bool:
        return (await status_of(session, control_plane.url))["client-0.default"]["connected"] is False

    await eventually(disconnected)
    plane = control_plane.control_plane
    plane.store.apply(load_resources(BOOKINFO_REVIEWS))  # it is still recompiled: now it is behind

    async def stale() -> bool:
        return (await status_of(session, control_plane.url))["client-0.default"]["status"] == "STALE"

    await eventually(stale)


async def test_idle_streams_get_pings(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    running = await run_control_plane(port=0, state_dir=tmp_path, with_ca=False, ping_interval=0.1)
    async with running:
        subscriber = await Subscriber(session, running.url, "client-0.default").start()
        try:
            await subscriber.next()

            async def pinged() -> bool:
                return subscriber.pings >= 2

            await eventually(pinged, within=5)
        finally:
            await subscriber.close()


async def test_bad_stream_and_ack_requests(control_plane: RunningControlPlane,
                                           session: aiohttp.ClientSession) -> None:
    url = control_plane.url
    async with session.get(f"{url}/api/v1/xds/stream") as response:
        assert response.status == 400
        assert (await response.json())["messages"][0]["field"] == "id"
    async with session.post(f"{url}/api/v1/xds/ack", json={"id": "ghost-0.default", "version": "x",
                                                           "status": "ACK"}) as response:
        assert response.status == 404
        assert "ghost-0.default has never connected" in (await response.json())["messages"][0]["message"]
    async with session.post(f"{url}/api/v1/xds/ack", json={"id": "a.b", "version": "x",
                                                           "status": "MAYBE"}) as response:
        assert response.status == 400
        assert (await response.json())["messages"][0]["field"] == "status"


async def test_snapshots_never_go_back_in_time_under_a_stream_of_changes(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession,
        subscribe: SubscriberFactory) -> None:
    plane = control_plane.control_plane
    shapes = [endpoint(f"reviews-{v}-0", v, 41000 + i) for i, v in enumerate(("v1", "v2", "v3", "v4", "v5"))]
    await register(session, control_plane.url, *shapes, endpoint("reviews-v1-1", port=41010))
    ids = [f"{e['instance']}.default" for e in shapes] + ["reviews-v1-1.default", "client-0.default"]
    subscribers = [await subscribe(proxy_id) for proxy_id in ids]
    plane.store.apply(load_resources(BOOKINFO_REVIEWS))
    for step in range(1, 41):  # changes landing while passes are compiling and sending
        plane.store.apply(load_resources(virtual_service("v2", timeout=f"{step}s")))
        await asyncio.sleep(0.001 * (step % 10))
    final = plane.store.revision
    for subscriber in subscribers:
        while not subscriber.received or subscriber.received[-1]["revision"] != final:
            await subscriber.next()
        revisions = [snapshot["revision"] for snapshot in subscriber.received]
        assert revisions == sorted(set(revisions)), revisions
    assert await plane.push.wait_synced(within=10)


async def test_proxy_status_can_wait_until_synced(control_plane: RunningControlPlane,
                                                  session: aiohttp.ClientSession,
                                                  subscribe: SubscriberFactory) -> None:
    url = control_plane.url
    await register(session, url, endpoint("reviews-v1-0"))
    acking = await subscribe("reviews-v1-0.default")
    await acking.next()
    await apply(session, url, BOOKINFO_REVIEWS)  # the wait covers the debounce and the push
    async with session.get(f"{url}/api/v1/proxy-status", params={"wait": "10"}) as response:
        doc = await response.json()
    assert doc["synced"] is True and doc["proxies"][0]["status"] == "SYNCED"
    assert doc["proxies"][0]["revision"] == 1
    silent = await subscribe("client-0.default", mode="silent")
    await silent.next()
    async with session.get(f"{url}/api/v1/proxy-status", params={"wait": "0.3"}) as response:
        assert (await response.json())["synced"] is False
    async with session.get(f"{url}/api/v1/proxy-status", params={"wait": "600"}) as response:
        assert response.status == 400
