"""The two explicit filter lists of the sidecar (outbound and inbound), outermost first.

This is the one place that says what runs on a request and in which order; see
proxy-shared interfaces in docs and DESIGN.md's data flow. Filters that need
process-wide state (the metrics registry, the access-log sink) are built here by
factories; everything per-configuration comes from ``request.config``.
"""

from __future__ import annotations

from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.accesslog import AccessLogSink, access_log
from meshkit.proxy.filters.authn import authn
from meshkit.proxy.filters.authz import authz
from meshkit.proxy.filters.circuit_breaker import circuit_breaker
from meshkit.proxy.filters.fault import fault
from meshkit.proxy.filters.loadbalance import loadbalance
from meshkit.proxy.filters.local_reply import local_reply
from meshkit.proxy.filters.metrics import inbound_metrics, outbound_metrics
from meshkit.proxy.filters.mirror import mirror
from meshkit.proxy.filters.ratelimit import ratelimit
from meshkit.proxy.filters.retry import retry
from meshkit.proxy.filters.route import route
from meshkit.proxy.filters.timeout import timeout
from meshkit.proxy.filters.tracing import tracing
from meshkit.proxy.http import Filter, Handler, Request, Response
from meshkit.proxy.stats import IstioMetrics


async def to_local_app(request: Request, call_next: Handler) -> Response:
    """Inbound: the only destination is the local app (``inbound.app`` of the snapshot)."""
    cluster = request.config.inbound_cluster
    if cluster is None:
        return Response.local(503, "no local app behind this proxy (inbound.app is null)\n", "NC")
    request.cluster = cluster.name
    request.endpoint = cluster.endpoints[0]
    return await call_next(request)


def outbound_filters(metrics: IstioMetrics, access: AccessLogSink | None) -> list[Filter]:
    filters: list[Filter] = [tracing]
    if access is not None:
        filters.append(access_log(access, "outbound"))
    filters += [
        outbound_metrics(metrics),
        local_reply,
        route,
        fault,
        mirror,
        timeout,
        retry,
        circuit_breaker,
        loadbalance,
    ]
    return filters


def inbound_filters(metrics: IstioMetrics, access: AccessLogSink | None) -> list[Filter]:
    filters: list[Filter] = [tracing]
    if access is not None:
        filters.append(access_log(access, "inbound"))
    filters += [
        inbound_metrics(metrics),
        local_reply,
        authn,  # x-forwarded-client-cert from the mTLS peer (none until the listener speaks TLS)
        authz,  # AuthorizationPolicy: DENY, then ALLOW -> 403 "RBAC: access denied"
        ratelimit,
        to_local_app,
    ]
    return filters


def build_outbound(terminal: Handler, metrics: IstioMetrics, access: AccessLogSink | None) -> Handler:
    return build_chain(outbound_filters(metrics, access), terminal)


def build_inbound(terminal: Handler, metrics: IstioMetrics, access: AccessLogSink | None) -> Handler:
    return build_chain(inbound_filters(metrics, access), terminal)
