"""The explicit filter lists of the sidecar (outbound and inbound), outermost first.

This is the one place that says what runs on a request and in which order; see
docs/architecture.md ("One request through the sidecar") and docs/proxy.md. Filters that need
process-wide state (the metrics registry, the access-log sink) are built here by
factories; everything per-configuration comes from ``request.config``.

Each direction has two parts. The filters every request runs (tracing, access log,
metrics, local reply), then a fork: outbound at the route step, which continues with the
route's own chain; inbound at the snapshot, which continues with the policy chain of the
snapshot in effect. Those lower lists pair every filter with its "does this scope need me"
predicate, and ``ScopedChains`` builds from them, once per route or snapshot, a chain that
only holds the filters with work to do (a route with no fault section has no fault filter;
a workload with no AuthorizationPolicy has no authz filter). Order is always this file's.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from meshkit.proxy.chain import Needs, ScopedChains, always, build_chain, per_snapshot
from meshkit.proxy.filters.accesslog import AccessLogSink, access_log
from meshkit.proxy.filters.authn import authn
from meshkit.proxy.filters.authz import authz, gateway_authz
from meshkit.proxy.filters.circuit_breaker import circuit_breaker
from meshkit.proxy.filters.fault import fault, has_fault
from meshkit.proxy.filters.jwt import gateway_jwt_authn, has_jwt_rules, jwt_authn
from meshkit.proxy.filters.loadbalance import loadbalance
from meshkit.proxy.filters.local_reply import local_reply
from meshkit.proxy.filters.metrics import inbound_metrics, outbound_metrics
from meshkit.proxy.filters.mirror import has_mirror, mirror
from meshkit.proxy.filters.ratelimit import has_rate_limit, ratelimit
from meshkit.proxy.filters.retry import retry
from meshkit.proxy.filters.route import route_step
from meshkit.proxy.filters.timeout import has_timeout, timeout
from meshkit.proxy.filters.tracing import tracing_filter
from meshkit.proxy.http import Filter, Handler, Request, Response, answered
from meshkit.proxy.spans import SpanRecorder
from meshkit.proxy.stats import IstioMetrics

if TYPE_CHECKING:  # types only: the snapshot module imports the filters; the schema is types only
    from meshkit.proxy.schema import RouteDoc
    from meshkit.proxy.snapshot import Snapshot


def to_local_app(request: Request, call_next: Handler) -> Awaitable[Response]:
    """Inbound: the only destination is the local app (``inbound.app`` of the snapshot)."""
    cluster = request.config.inbound_cluster
    if cluster is None:
        return answered(Response.local(503, "no local app behind this proxy (inbound.app is null)\n", "NC"))
    request.cluster = cluster.name
    request.endpoint = cluster.endpoints[0]
    return call_next(request)


def has_authz_policies(snapshot: object) -> bool:
    """Does this snapshot need the authz filter? (``authz`` is None when no policy applies.)"""
    return getattr(snapshot, "authz", True) is not None  # no such attribute: let authz refuse (500)


def outbound_filters(
    metrics: IstioMetrics | None, access: AccessLogSink | None, spans: SpanRecorder | None = None,
    *, tracing: bool = True,
) -> list[Filter]:
    """Outbound, above the route step: runs on every request. ``metrics`` None, ``access`` None and
    ``tracing`` False leave out the metrics, access-log and tracing filters (``--telemetry``)."""
    filters: list[Filter] = [tracing_filter(spans, "CLIENT")] if tracing else []
    if access is not None:
        filters.append(access_log(access, "outbound"))
    if metrics is not None:
        filters.append(outbound_metrics(metrics))
    # gateway_jwt_authn, gateway_authz: a gateway's RequestAuthentication (before the route step, for
    # claim-based routing) and AuthorizationPolicy, as Envoy's jwt_authn and rbac filters on a
    # gateway's listener; one attribute read each on a sidecar
    filters += [local_reply, gateway_jwt_authn, gateway_authz]
    return filters


# Outbound, below the route step, per matched route (scope: the route's snapshot dict).
# retry stays everywhere: it sets x-envoy-attempt-count on every request, as Istio does.
# circuit_breaker and loadbalance act on the cluster, which a mirror's shadow changes.
OUTBOUND_ROUTE_FILTERS: tuple[tuple[Filter, Needs[RouteDoc]], ...] = (
    (fault, has_fault),
    (mirror, has_mirror),
    (timeout, has_timeout),
    (retry, always),
    (circuit_breaker, always),
    (loadbalance, always),
)


def inbound_filters(
    metrics: IstioMetrics | None, access: AccessLogSink | None, spans: SpanRecorder | None = None,
    *, tracing: bool = True,
) -> list[Filter]:
    """Inbound, above the policy fork: runs on every request (the same switches as outbound)."""
    filters: list[Filter] = [tracing_filter(spans, "SERVER")] if tracing else []
    if access is not None:
        filters.append(access_log(access, "inbound"))
    if metrics is not None:
        filters.append(inbound_metrics(metrics))
    filters.append(local_reply)
    return filters


# Inbound, per snapshot (scope: the Snapshot in effect).
INBOUND_POLICY_FILTERS: tuple[tuple[Filter, Needs[Snapshot]], ...] = (
    (authn, always),  # x-forwarded-client-cert: always sanitised, set from the mTLS peer
    (jwt_authn, has_jwt_rules),  # RequestAuthentication: bad token -> 401, good one -> request.auth
    (authz, has_authz_policies),  # AuthorizationPolicy: DENY, then ALLOW -> 403 "RBAC: access denied"
    (ratelimit, has_rate_limit),
    (to_local_app, always),
)


def outbound_route_chains(terminal: Handler) -> ScopedChains[RouteDoc]:
    return ScopedChains(OUTBOUND_ROUTE_FILTERS, terminal)


def inbound_policy_chains(terminal: Handler) -> ScopedChains[Snapshot]:
    return ScopedChains(INBOUND_POLICY_FILTERS, terminal)


def build_outbound(
    terminal: Handler, metrics: IstioMetrics | None, access: AccessLogSink | None,
    spans: SpanRecorder | None = None, *, tracing: bool = True,
) -> Handler:
    return build_chain(outbound_filters(metrics, access, spans, tracing=tracing),
                       route_step(outbound_route_chains(terminal)))


def build_inbound(
    terminal: Handler, metrics: IstioMetrics | None, access: AccessLogSink | None,
    spans: SpanRecorder | None = None, *, tracing: bool = True,
) -> Handler:
    return build_chain(inbound_filters(metrics, access, spans, tracing=tracing),
                       per_snapshot(inbound_policy_chains(terminal)))
