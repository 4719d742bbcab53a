"""Endpoint selection: the last filter before the upstream connection pool.

Picks an endpoint of ``request.cluster`` with the cluster's balancer (``Cluster.pick``), stores
it in ``request.endpoint`` (what the upstream sends to), keeps the endpoint's active-request
gauge (least-request balancing reads it) and reports the outcome to ``Cluster.on_result``
(outlier detection): the status, or ``None`` for a connect failure, reset or upstream timeout.
A retry (``request.attempt > 1``) asks the balancer to avoid the endpoint the previous attempt
used. No endpoint left: 503 ``no healthy upstream``, flag ``UH``.
"""

from __future__ import annotations

import asyncio
import time

from meshkit.proxy.filters.timeout import is_timeout_cancel
from meshkit.proxy.http import Handler, Request, Response, UpstreamError

NO_HEALTHY_UPSTREAM = "no healthy upstream"


async def loadbalance(request: Request, call_next: Handler) -> Response:
    cluster = request.config.clusters[request.cluster]
    previous = request.endpoint if request.attempt > 1 else None
    endpoint = cluster.pick(time.monotonic(), previous)
    if endpoint is None:
        cluster.traffic.upstream_cx_none_healthy += 1
        return Response.local(503, NO_HEALTHY_UPSTREAM, "UH")
    request.endpoint = endpoint
    load = endpoint._load
    load.active += 1
    try:
        response = await call_next(request)
    except UpstreamError:
        cluster.on_result(endpoint, None, time.monotonic())
        raise
    except asyncio.CancelledError as exc:
        if is_timeout_cancel(exc):
            cluster.on_result(endpoint, None, time.monotonic())
        raise
    finally:
        load.active -= 1
    cluster.on_result(endpoint, response.status, time.monotonic())
    return response
