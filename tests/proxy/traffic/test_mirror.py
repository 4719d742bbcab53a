"""Mirroring: a shadow copy with a -shadow authority that never delays or fails the primary."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.mirror import check_mirror, mirror, shadow_authority
from meshkit.proxy.http import Handler, Request, Response
from meshkit.proxy.snapshot import Snapshot

from .conftest import Action, cluster_spec, free_port, make_request, outbound_chain, snapshot_with


def _route(percent: float = 100.0, cluster: str = "shadow|") -> dict[str, Any]:
    return {
        "mirror": {"cluster": cluster, "percent": percent},
        "fault": None,
        "timeout_ms": None,
        "retries": {"attempts": 2, "retry_on": ["5xx"]},
    }


async def _settle(config: Snapshot, cluster: str = "svc|", seconds: float = 3.0) -> None:
    tasks = set(config.clusters[cluster].traffic.mirror_tasks)
    if tasks:
        await asyncio.wait(tasks, timeout=seconds)


@pytest.mark.parametrize(
    ("authority", "shadow"),
    [
        ("reviews:9080", "reviews-shadow:9080"),
        ("reviews", "reviews-shadow"),
        ("reviews.default.svc.cluster.local:9080", "reviews.default.svc.cluster.local-shadow:9080"),
        ("127.0.0.1:8080", "127.0.0.1-shadow:8080"),
        ("[::1]:80", "[::1]-shadow:80"),
    ],
)
def test_shadow_authority_appends_to_the_host_part(authority: str, shadow: str) -> None:
    assert shadow_authority(authority) == shadow


async def test_shadow_copy_reaches_the_mirror_cluster(backends: Any, send: Handler) -> None:
    primary, shadow = await backends("primary", "shadow")
    config = snapshot_with({"svc|": cluster_spec([primary.port]), "shadow|": cluster_spec([shadow.port])})
    request = make_request(config, _route(), body=b"order=1", method="POST", authority="reviews:9080")
    request.headers.add("x-request-id", "abc")
    response = await outbound_chain(send)(request)
    await _settle(config)
    assert response.status == 200 and response.body == b"ok from primary"
    assert [s.headers["host"] for s in primary.seen] == ["reviews:9080"]
    (copy,) = shadow.seen
    assert (copy.method, copy.path, copy.body) == ("POST", "/path", b"order=1")
    assert copy.headers["host"] == "reviews-shadow:9080" and copy.headers["x-request-id"] == "abc"
    assert request.authority == "reviews:9080"
    assert config.clusters["svc|"].traffic.mirror_rq_sent == 1


async def test_slow_or_failing_shadow_never_delays_or_fails_the_primary(backends: Any, send: Handler) -> None:
    primary, shadow = await backends("primary", "shadow")
    shadow.default = Action(503, delay=1.2)
    config = snapshot_with({"svc|": cluster_spec([primary.port]), "shadow|": cluster_spec([shadow.port])})
    response = await outbound_chain(send)(make_request(config, _route()))
    assert response.status == 200
    traffic = config.clusters["svc|"].traffic
    assert len(traffic.mirror_tasks) == 1  # the answer came while the slow shadow is still in flight
    await _settle(config)
    # the shadow is not retried (Envoy sends shadows without the route's retry policy)
    assert len(shadow.seen) == 1 and traffic.mirror_tasks == set()

    dead = snapshot_with({"svc|": cluster_spec([primary.port]), "shadow|": cluster_spec([free_port()])})
    response = await outbound_chain(send)(make_request(dead, _route()))
    await _settle(dead)
    assert response.status == 200
    assert dead.clusters["svc|"].traffic.mirror_rq_failed == 1


async def test_shadow_is_bounded_by_the_route_timeout(backends: Any, send: Handler) -> None:
    primary, shadow = await backends("primary", "shadow")
    shadow.default = Action(delay=3.0)
    config = snapshot_with({"svc|": cluster_spec([primary.port]), "shadow|": cluster_spec([shadow.port])})
    route = {**_route(), "timeout_ms": 200}
    assert (await outbound_chain(send)(make_request(config, route))).status == 200
    await _settle(config, seconds=1.5)
    assert config.clusters["svc|"].traffic.mirror_rq_failed == 1


async def test_streamed_bodies_and_missing_clusters_are_skipped_and_counted(
    backends: Any, send: Handler
) -> None:
    primary, shadow = await backends("primary", "shadow")
    config = snapshot_with({"svc|": cluster_spec([primary.port]), "shadow|": cluster_spec([shadow.port])})

    async def chunks() -> Any:
        yield b"streamed"

    streamed = make_request(config, _route(), body=chunks(), method="POST")
    assert (await outbound_chain(send)(streamed)).status == 200
    missing = make_request(config, _route(cluster="nowhere|"))
    assert (await outbound_chain(send)(missing)).status == 200
    await _settle(config)
    traffic = config.clusters["svc|"].traffic
    assert (traffic.mirror_rq_skipped_streamed, traffic.mirror_rq_no_cluster) == (1, 1)
    assert shadow.seen == [] and [s.body for s in primary.seen] == [b"streamed", b""]


async def test_mirror_percent_is_sampled() -> None:
    random.seed(9)
    authorities: list[str] = []

    async def app(request: Request) -> Response:
        authorities.append(request.authority)
        return Response(200)

    config = snapshot_with({"svc|": cluster_spec([1]), "shadow|": cluster_spec([2])})
    handler = build_chain([mirror], app)
    for _ in range(400):
        await handler(make_request(config, _route(percent=25.0)))
    await _settle(config)
    shadows = authorities.count("svc-shadow:80")
    assert authorities.count("svc:80") == 400
    assert 70 < shadows < 130, shadows


def test_bad_mirror_sections_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"r\.mirror\.cluster"):
        check_mirror({"mirror": {"percent": 10}}, "r")
    with pytest.raises(ValueError, match=r"r\.mirror\.percent"):
        check_mirror({"mirror": {"cluster": "a|", "percent": -1}}, "r")
    check_mirror({"mirror": None}, "r")
