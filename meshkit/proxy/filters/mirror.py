"""Traffic mirroring (Envoy's request mirror policy, Istio's ``VirtualService.http[].mirror``).

For ``percent``% of the requests on a route with a ``mirror`` section, a shadow copy goes to the
mirror cluster in a background task while the primary request proceeds untouched: the shadow
never delays or fails the primary. The shadow's authority (and Host header) gets ``-shadow``
appended to its host part (``reviews:9080`` -> ``reviews-shadow:9080``, as Envoy does); it runs
through the rest of the chain below this filter without the route's retries, bounded by the
route timeout (or ``SHADOW_TIMEOUT_MS`` when the route has none), and its response body is
drained and dropped. Only fully received (``bytes``) bodies are mirrored: a streamed body is
consumed by the primary, so such requests are not mirrored at all (counted as
``mirror_rq_skipped_streamed``). Failures are swallowed and counted (``mirror_rq_failed``).
Counters live on the primary cluster's ``traffic``; running shadow tasks are kept in its
``mirror_tasks`` set so they are neither garbage-collected mid-flight nor leaked.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from meshkit.proxy.balancer import ClusterTraffic
from meshkit.proxy.filters.timeout import call_with_deadline
from meshkit.proxy.http import Handler, Request, Response

if TYPE_CHECKING:  # the schema's TypedDicts are types only: never loaded by a running sidecar
    from meshkit.proxy.schema import RouteDoc

SHADOW_SUFFIX = "-shadow"
SHADOW_TIMEOUT_MS = 30_000


def shadow_authority(authority: str) -> str:
    """``reviews:9080`` -> ``reviews-shadow:9080``; ``[::1]:80`` -> ``[::1]-shadow:80``."""
    if authority.startswith("["):
        host, sep, rest = authority.partition("]")
        return f"{host}{sep}{SHADOW_SUFFIX}{rest}"
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return f"{host}{SHADOW_SUFFIX}:{port}"
    return f"{authority}{SHADOW_SUFFIX}"


def check_mirror(route: dict[str, Any], where: str) -> None:
    """Validate a route's ``mirror`` section (for snapshot loading); errors name the key path."""
    spec = route.get("mirror")
    if spec is None:
        return
    where = f"{where}.mirror"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected an object or null, got {spec!r}")
    cluster = spec.get("cluster")
    if not isinstance(cluster, str) or not cluster:
        raise ValueError(f"{where}.cluster: expected a cluster name, got {cluster!r}")
    percent = spec.get("percent", 100.0)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise ValueError(f"{where}.percent: expected a number 0-100, got {percent!r}")


def _shadow_of(request: Request, cluster: str) -> Request:
    authority = shadow_authority(request.authority)
    headers = request.headers.copy()
    if "host" in headers:
        headers.set("host", authority)
    shadow = Request(
        request.method,
        request.path,
        authority,
        headers,
        request.body,
        direction=request.direction,
        downstream_addr=request.downstream_addr,
        peer_identity=request.peer_identity,
        config=request.config,
        start=asyncio.get_running_loop().time(),
        version=request.version,
    )
    shadow.cluster = cluster
    return shadow  # route stays None: no retries, no fault, no nested mirror


async def _send_shadow(
    call_next: Handler, shadow: Request, timeout_ms: int, traffic: ClusterTraffic
) -> None:
    try:
        response = await call_with_deadline(call_next, shadow, timeout_ms / 1000.0)
        if response is None:
            traffic.mirror_rq_failed += 1
            return
        body = response.body
        if not isinstance(body, bytes):
            async for _chunk in body:
                pass
        traffic.mirror_rq_sent += 1
    except Exception:
        traffic.mirror_rq_failed += 1


def has_mirror(route: RouteDoc) -> bool:
    """Does this route need the mirror filter (pipeline predicate)?"""
    return route.get("mirror") is not None


async def mirror(request: Request, call_next: Handler) -> Response:
    route = request.route
    spec = route.get("mirror") if route is not None else None
    if spec is None:
        return await call_next(request)
    percent = spec.get("percent", 100.0)
    if percent < 100.0 and random.random() * 100.0 >= percent:
        return await call_next(request)
    clusters = request.config.clusters
    primary = clusters.get(request.cluster)
    if primary is not None:
        traffic = primary.traffic
        target = spec["cluster"]
        if target not in clusters:
            traffic.mirror_rq_no_cluster += 1
        elif not isinstance(request.body, bytes):
            traffic.mirror_rq_skipped_streamed += 1
        else:
            timeout_ms = route.get("timeout_ms") or SHADOW_TIMEOUT_MS
            task = asyncio.ensure_future(
                _send_shadow(call_next, _shadow_of(request, target), timeout_ms, traffic)
            )
            tasks = traffic.mirror_tasks
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    return await call_next(request)
