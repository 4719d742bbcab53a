"""One VirtualService's ``http`` rules -> the snapshot's routes for one proxy: matches, destinations
(by cluster name), weights, headers, rewrite, redirect, fault, mirror, timeout and retries, with
Istio's defaults (docs/snapshot.md, docs/config-reference.md). Gateway API HTTPRoutes arrive here
as VirtualServices (`httproutes`), so there is one router.

Called by `compile_virtual_hosts` (and, through it, by `egress` for ServiceEntry hosts). It must not
decide which VirtualService claims a host (`compile_virtual_hosts`, `selection`) nor build clusters:
it only names them (`compile_clusters.cluster_name`, `egress.port_cluster`). Pure data in, plain
JSON out: no I/O, no sockets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshkit.config.compile_clusters import cluster_name
from meshkit.config.egress import port_cluster
from meshkit.config.gateways import Gateway, match_scope
from meshkit.config.hosts import resolve_host
from meshkit.config.httproutes import from_http_route
from meshkit.config.registry import Node, Service
from meshkit.config.resources import (
    PREFIX_MARK,
    Destination,
    HeaderOperations,
    Headers,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRewrite,
    HTTPRoute,
    StringMatch,
    VirtualService,
    parse_duration_ms,
)
from meshkit.config.selection import labels_match

# Istio's default retry policy (pilot/pkg/networking/core/route/retry, Istio 1.24+): 2 attempts on
# these conditions and NO retriable status code. Istio <= 1.23 also had "retriable-status-codes"
# with 503; 1.24 dropped the 503 retry (it re-ran non-idempotent calls the app had answered).
DEFAULT_RETRY_ON = ["connect-failure", "refused-stream", "unavailable", "cancelled"]
DEFAULT_RETRY_ATTEMPTS = 2
_STATUS_CODE = re.compile(r"^\d{3}$")


def default_retry_policy() -> dict[str, Any]:
    """Istio's retry policy for a route whose VirtualService sets no ``retries``."""
    return {"attempts": DEFAULT_RETRY_ATTEMPTS, "per_try_timeout_ms": None,
            "retry_on": list(DEFAULT_RETRY_ON), "retriable_status_codes": []}


def routes_of(vs: VirtualService, node: Node,
              selected: Mapping[tuple[str, str], Gateway] | None = None) -> list[dict[str, Any]]:
    """``vs``'s routes for ``node`` (``selected``: the Gateways selecting a gateway proxy)."""
    context = _RouteContext(vs, node, selected or {})
    return [route for index, http in enumerate(vs.spec.http or [])
            if (route := _route(context, index, http)) is not None]


class _RouteContext:
    """What every route of one VirtualService compiled for one proxy shares, worked out once (a 1 MB
    VirtualService has 8,000 routes): its namespace, name, reference, Istio's "gateway semantics"
    (`httproutes.from_http_route`), and the cluster name of each destination seen so far."""

    __slots__ = ("clusters", "gateway_semantics", "name", "namespace", "node", "ref", "selected", "vs")

    def __init__(self, vs: VirtualService, node: Node, selected: Mapping[tuple[str, str], Gateway]) -> None:
        self.vs, self.node, self.selected = vs, node, selected
        self.namespace, self.name, self.ref = vs.metadata.namespace, vs.metadata.name, vs.ref
        self.gateway_semantics = from_http_route(vs)
        self.clusters: dict[tuple[str, str | None], str] = {}

    def cluster(self, destination: Destination) -> str:
        """`_cluster_key` of ``destination`` in this VirtualService's namespace."""
        key = (destination.host, destination.subset)
        found = self.clusters.get(key)
        if found is None:
            found = self.clusters[key] = _cluster_key(destination, self.namespace)
        return found


def default_route(svc: Service) -> dict[str, Any]:
    """The route of a registry service no VirtualService claims (`route_to` its cluster)."""
    return route_to(cluster_name(svc.name, svc.namespace))


def route_to(cluster: str) -> dict[str, Any]:
    """The route of a host no VirtualService claims: all of it to ``cluster``, Istio's default retries."""
    return {
        "name": "default", "source": "default", "match": [],
        "route": [{"cluster": cluster, "weight": 100, "headers": None}],
        "headers": None, "rewrite": None, "redirect": None, "fault": None, "mirror": None,
        "timeout_ms": None, "retries": default_retry_policy(),
    }


def _cluster_key(destination: Destination, namespace: str) -> str:
    resolved = resolve_host(destination.host, namespace)
    subset = destination.subset or ""
    registry = resolved.name is not None and resolved.namespace is not None
    if destination.port is not None:  # a port's own cluster when there is one (`fold_port_clusters`)
        host = f"{resolved.name}.{resolved.namespace}.svc.cluster.local" if registry else resolved.host
        return port_cluster(host, destination.port.number, subset)
    if resolved.name is not None and resolved.namespace is not None:
        return cluster_name(resolved.name, resolved.namespace, subset)
    return f"{resolved.host}|{subset}"


def _route(context: _RouteContext, index: int, http: HTTPRoute) -> dict[str, Any] | None:
    matches: list[dict[str, Any]] = []
    # Istio's "gateway semantics" for an HTTPRoute's internal VirtualService: a Gateway API PathPrefix
    # matches whole path segments (a VirtualService's prefix stays a string prefix), %PREFIX()% redirects
    gateway_semantics = context.gateway_semantics
    if http.match:
        node = context.node
        for m in http.match:
            applies, port = match_scope(m, context.vs, node, context.selected)  # match.gateways, match.port
            if applies and (not m.source_labels or labels_match(m.source_labels, node.labels)):
                matches.append({**_match(m, gateway_semantics), **({"port": port} if port else {})})
        if not matches:
            return None  # every match is for other source workloads or other gateways
    destinations = http.route or []
    single = len(destinations) == 1
    fault = _fault(http)
    return {
        "name": http.name or f"{context.name}.{index}",
        "source": f"{context.ref}#http[{index}]",
        "match": matches,
        "route": [
            {"cluster": context.cluster(d.destination),
             # Istio: the only destination gets all traffic whatever its weight; several
             # destinations split in proportion to their weights (unset = 0), summing to any total
             "weight": 100 if single else (d.weight or 0),
             "headers": _headers(d.headers)}
            for d in destinations
        ],
        "headers": _headers(http.headers),
        "rewrite": _rewrite(http.rewrite),
        "redirect": _redirect(http.redirect, gateway_semantics) if http.redirect is not None else None,
        "fault": fault,
        "mirror": _mirror(http, context),
        "timeout_ms": None if fault or http.timeout is None else parse_duration_ms(http.timeout),
        "retries": None if fault else _retries(http),
    }


def _rewrite(rewrite: HTTPRewrite | None) -> dict[str, Any] | None:
    regex = rewrite.uri_regex_rewrite if rewrite is not None else None
    if rewrite is None or (rewrite.uri is None and rewrite.authority is None and regex is None):
        return None
    return {"uri": rewrite.uri, "authority": rewrite.authority,
            "uri_regex": {"match": regex.match, "rewrite": regex.rewrite} if regex is not None else None}


def _redirect(redirect: HTTPRedirect, gateway_semantics: bool) -> dict[str, Any]:
    """Istio's translation of a redirect: ``%PREFIX()%/x`` replaces the matched prefix only for an
    HTTPRoute's internal VirtualService (in a user's VirtualService it is a literal path)."""
    uri = redirect.uri
    prefix_rewrite = None
    if uri is not None and gateway_semantics and uri.startswith(PREFIX_MARK):
        prefix_rewrite, uri = uri[len(PREFIX_MARK):] or "/", None
    return {
        "scheme": redirect.scheme, "host": redirect.authority, "port": redirect.port,
        "derive_port": redirect.derive_port, "path": uri, "prefix_rewrite": prefix_rewrite,
        "response_code": redirect.redirect_code or 301,
    }


def _string_match(match: StringMatch) -> dict[str, str]:
    kind, value = match.kind_and_value
    return {kind: value}


def _match_map(items: Mapping[str, StringMatch] | None) -> dict[str, dict[str, str]]:
    """Header names lower-cased, except JWT claim matches (``@request.auth.claims.Name``): claims
    are case-sensitive."""
    return {name if name.startswith("@request.auth.claims") else name.lower(): _string_match(m)
            for name, m in sorted((items or {}).items())}


def _match(m: HTTPMatchRequest, gateway_semantics: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (("uri", m.uri), ("method", m.method), ("authority", m.authority)):
        if value is not None:
            out[key] = _string_match(value)
    prefix = m.uri.prefix if m.uri is not None else None
    if gateway_semantics and prefix is not None and prefix != "/":
        out["uri"] = {"path_separated_prefix": prefix.rstrip("/") or "/"}
    if m.headers:
        out["headers"] = _match_map(m.headers)
    if m.without_headers:
        out["without_headers"] = _match_map(m.without_headers)
    if m.query_params:
        out["query_params"] = {name: _string_match(v) for name, v in sorted(m.query_params.items())}
    out["ignore_uri_case"] = bool(m.ignore_uri_case)
    return out


def _header_ops(ops: HeaderOperations | None) -> dict[str, Any]:
    if ops is None:
        return {"set": {}, "add": {}, "remove": []}
    return {
        "set": {k.lower(): v for k, v in sorted((ops.set or {}).items())},
        "add": {k.lower(): v for k, v in sorted((ops.add or {}).items())},
        "remove": [name.lower() for name in ops.remove or []],
    }


def _headers(headers: Headers | None) -> dict[str, Any] | None:
    if headers is None:
        return None
    return {"request": _header_ops(headers.request), "response": _header_ops(headers.response)}


def _fault(http: HTTPRoute) -> dict[str, Any] | None:
    if http.fault is None or (http.fault.delay is None and http.fault.abort is None):
        return None
    delay = abort = None
    if (d := http.fault.delay) is not None:
        percent = d.percentage.value if d.percentage else float(d.percent) if d.percent is not None else 0.0
        delay = {"fixed_delay_ms": parse_duration_ms(d.fixed_delay), "percent": float(percent)}
    if (a := http.fault.abort) is not None:
        abort = {"http_status": a.http_status, "percent": float(a.percentage.value) if a.percentage else 0.0}
    return {"delay": delay, "abort": abort}


def _mirror(http: HTTPRoute, context: _RouteContext) -> dict[str, Any] | None:
    if http.mirror is None:
        return None
    if http.mirror_percentage is not None:
        percent = float(http.mirror_percentage.value)
    elif http.mirror_percent is not None:
        percent = float(http.mirror_percent)
    else:
        percent = 100.0
    return {"cluster": context.cluster(http.mirror), "percent": percent}


def _retries(http: HTTPRoute) -> dict[str, Any]:
    retries = http.retries
    if retries is None:
        return default_retry_policy()
    retry_on = retries.retry_on_list
    if not retry_on:
        codes = []
        retry_on = list(DEFAULT_RETRY_ON)
    else:
        codes = sorted({int(item) for item in retry_on if _STATUS_CODE.match(item)})
    return {
        "attempts": retries.attempts,
        "per_try_timeout_ms": parse_duration_ms(retries.per_try_timeout) if retries.per_try_timeout else None,
        "retry_on": retry_on,
        "retriable_status_codes": codes,
    }
