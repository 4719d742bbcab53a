"""Istio's standard request metrics, recorded by both sidecars of an exchange.

``outbound_metrics(registry)`` reports as ``reporter="source"``: source labels are this
proxy's node, destination labels come from the chosen endpoint and its cluster. It also
tells the destination sidecar who the source is, with one ``x-meshkit-source`` header
(appended after any the app sent; the destination keeps the last one).
``inbound_metrics(registry)`` reports as ``reporter="destination"``: destination labels
are this node; source labels exist only for an mTLS caller: the principal is the verified
peer identity, the rest comes from those headers (appended by the caller's sidecar, after
anything its app sent). A plaintext caller's labels are all ``unknown``: nothing it sends
is trusted. The headers are always stripped before the app sees them. A streamed response is
recorded when its body ends (as Envoy records at stream completion); a cancelled
exchange (downstream went away) as status 0 with flag ``DC``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from meshkit.proxy.bodies import ObservedBody
from meshkit.proxy.egress import EGRESS_CLUSTERS
from meshkit.proxy.http import Filter, Handler, Request, Response
from meshkit.proxy.stats import CLUSTER_ID, IstioMetrics, canonical_revision, canonical_service

UNKNOWN = "unknown"
SOURCE_HEADER = "x-meshkit-source"  # "<workload>;<namespace>;<app>;<version>;<principal>"
_MAX_PARSED = 1024


def merged_flags(request: Request, response: Response | None) -> str:
    """Envoy's %RESPONSE_FLAGS%: flags raised on the way down plus those of the response, or "-"."""
    down = request.flags
    up = response.flags if response is not None else ""
    if down and up:
        return f"{down},{up}"
    return down or up or "-"


def body_size(body: Any) -> int:
    if isinstance(body, bytes):
        return len(body)
    return int(getattr(body, "bytes_received", 0))


def _record_later(
    request: Request, response: Response, record: Callable[[Response, int], None]
) -> None:
    """Record now for a bytes body; at the end of the body for a streamed one."""
    body = response.body
    if isinstance(body, bytes):
        record(response, len(body))
    else:
        response.body = ObservedBody.observe(body, lambda b: record(response, b.sent))


def outbound_metrics(registry: IstioMetrics) -> Filter:
    """The source-side metrics filter (see the module docstring)."""

    fast = registry.fast_keys

    def record(request: Request, response: Response | None, status: int, sent: int) -> None:
        if request.flags or response is None:
            flags = merged_flags(request, response)
        else:
            flags = response.flags or "-"  # merged_flags' common case, without the call
        key = (request.config.node_labels, request.cluster, request.endpoint, status, flags)
        series = fast.get(key)
        if series is None:
            series = registry.series(key, lambda: _source_labels(request, status, flags))
        body = request.body
        size = len(body) if isinstance(body, bytes) else body_size(body)
        series.record((time.monotonic() - request.start) * 1000.0, size, sent)

    async def metrics(request: Request, call_next: Handler) -> Response:
        # Appended last: the destination side keeps the last value of each, so an app cannot
        # spoof them by sending its own (and no per-request scan is needed here).
        request.headers.items().extend(request.config.source_headers)
        try:
            response = await call_next(request)
        except asyncio.CancelledError:
            request.flags = f"{request.flags},DC" if request.flags else "DC"
            record(request, None, 0, 0)
            raise
        body = response.body
        if isinstance(body, bytes):
            record(request, response, response.status, len(body))
        else:
            _record_later(request, response, lambda r, sent: record(request, r, r.status, sent))
        return response

    return metrics


def _source_labels(request: Request, status: int, flags: str) -> dict[str, str]:
    config = request.config
    node = config.node_labels
    endpoint = request.endpoint
    cluster = config.clusters.get(request.cluster) if request.cluster else None
    labels = {
        "reporter": "source",
        "source_workload": node.workload,
        "source_canonical_service": node.canonical_service,
        "source_canonical_revision": node.canonical_revision,
        "source_workload_namespace": node.namespace,
        "source_principal": node.principal,
        "source_app": node.app,
        "source_version": node.version,
        "source_cluster": CLUSTER_ID,
        "request_protocol": "http",
        "response_code": str(status),
        "response_flags": flags,
        "connection_security_policy": UNKNOWN,
    }
    service = cluster.service if cluster is not None else None
    identity = endpoint.identity if endpoint is not None else None
    if cluster is not None and cluster.namespace is not None:
        namespace = cluster.namespace
    else:
        namespace = config.destination_namespace(identity) if (service or identity) else UNKNOWN
    if endpoint is not None:
        labels["destination_workload"] = endpoint.workload or UNKNOWN
        labels["destination_workload_namespace"] = namespace
        labels["destination_principal"] = identity or UNKNOWN
        labels["destination_app"] = endpoint.labels.get("app") or service or UNKNOWN
        labels["destination_version"] = endpoint.version or UNKNOWN
        ep_labels = {"version": endpoint.version or "", **(endpoint.labels or {})}
        labels["destination_canonical_service"] = canonical_service(
            ep_labels, endpoint.workload or service or UNKNOWN
        )
        labels["destination_canonical_revision"] = canonical_revision(ep_labels)
        labels["destination_cluster"] = CLUSTER_ID
    if service:
        labels["destination_service"] = f"{service}.{namespace}.svc.cluster.local"
        labels["destination_service_name"] = service
        labels["destination_service_namespace"] = namespace
    elif request.cluster in EGRESS_CLUSTERS:  # a host outside the registry (proxy/egress.py)
        labels["destination_service"] = request.authority or UNKNOWN
        labels["destination_service_name"] = request.cluster
    return labels


def inbound_metrics(registry: IstioMetrics) -> Filter:
    """The destination-side metrics filter (see the module docstring)."""
    parsed: dict[str, tuple[str, ...]] = {}
    fast = registry.fast_keys

    def record(
        request: Request, source: tuple[str, ...], response: Response | None, status: int, sent: int
    ) -> None:
        config = request.config
        if request.flags or response is None:
            flags = merged_flags(request, response)
        else:
            flags = response.flags or "-"
        policy = "mutual_tls" if request.peer_identity else "none"
        key = (config.node_labels, source, status, flags, policy)
        series = fast.get(key)
        if series is None:
            series = registry.series(key, lambda: _destination_labels(request, source, status, flags, policy))
        duration = (time.monotonic() - request.start) * 1000.0
        body = request.body
        series.record(duration, len(body) if isinstance(body, bytes) else body_size(body), sent)

    async def metrics(request: Request, call_next: Handler) -> Response:
        source = _take_source(request, parsed)
        try:
            response = await call_next(request)
        except asyncio.CancelledError:
            request.flags = f"{request.flags},DC" if request.flags else "DC"
            record(request, source, None, 0, 0)
            raise
        body = response.body
        if isinstance(body, bytes):
            record(request, source, response, response.status, len(body))
        else:
            _record_later(request, response, lambda r, sent: record(request, source, r, r.status, sent))
        return response

    return metrics


_NO_SOURCE = (UNKNOWN,) * 5


def parse_source(value: str, cache: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """``"<workload>;<namespace>;<app>;<version>;<principal>"`` -> a 5-tuple (missing = unknown).

    ``cache`` (owned by one filter instance) remembers parsed values: callers are few and repeat.
    """
    found = cache.get(value)
    if found is None:
        parts = [p.strip() or UNKNOWN for p in value.split(";")[:5]]
        found = tuple(parts + [UNKNOWN] * (5 - len(parts)))
        if len(cache) >= _MAX_PARSED:
            cache.clear()
        cache[value] = found
    return found


def _take_source(request: Request, cache: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The caller's labels from the x-meshkit-source header (the last one wins), which is removed."""
    items = request.headers.items()
    value: str | None = None
    found = last = 0
    for index, (name, text) in enumerate(items):
        if name == SOURCE_HEADER:
            value = text
            found += 1
            last = index
    if found == 1:
        del items[last]  # the usual case: one header, from the calling sidecar
    elif found:
        items[:] = [i for i in items if i[0] != SOURCE_HEADER]
    peer = request.peer_identity
    if peer is None:
        # Plaintext: nothing the caller sends is evidence of who it is (a forged header would set
        # source_principal and friends), so every source label is unknown, as for Istio without
        # a verified peer.
        return _NO_SOURCE
    source = parse_source(value, cache) if value is not None else _NO_SOURCE
    return (*source[:4], peer)


def _destination_labels(
    request: Request, source: tuple[str, ...], status: int, flags: str, policy: str
) -> dict[str, str]:
    config = request.config
    node = config.node_labels
    workload, namespace, app, version, principal = source
    if namespace == UNKNOWN and principal != UNKNOWN:
        parts = principal.split("/")
        if "ns" in parts[:-1]:
            namespace = parts[parts.index("ns") + 1]
    known = workload != UNKNOWN or principal != UNKNOWN
    return {
        "reporter": "destination",
        "source_workload": workload,
        "source_canonical_service": app if app != UNKNOWN else workload,
        "source_canonical_revision": version if version != UNKNOWN else "latest",
        "source_workload_namespace": namespace,
        "source_principal": principal,
        "source_app": app,
        "source_version": version,
        "source_cluster": CLUSTER_ID if known else UNKNOWN,
        "destination_workload": node.workload,
        "destination_workload_namespace": node.namespace,
        "destination_principal": node.principal,
        "destination_app": node.app,
        "destination_version": node.version,
        "destination_service": config.inbound_service_fqdn,
        "destination_canonical_service": node.canonical_service,
        "destination_canonical_revision": node.canonical_revision,
        "destination_cluster": CLUSTER_ID,
        "destination_service_name": node.service or UNKNOWN,
        "destination_service_namespace": node.namespace if node.service else UNKNOWN,
        "request_protocol": "http",
        "response_code": str(status),
        "response_flags": flags,
        "connection_security_policy": policy,
    }
