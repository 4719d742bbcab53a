"""Resources + service registry -> the per-proxy snapshot of docs/snapshot.md (a plain JSON dict).

`compile_snapshot` is a pure, deterministic function: the same input gives the same dict and the
same ``version`` (a hash of the content). Which resource applies where follows Istio's precedence
(see `selection`); how each Istio field becomes a snapshot field is documented in
docs/config-reference.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from meshkit.config.authn import RequestAuthentication, compile_jwt, request_authentications_for
from meshkit.config.delegates import expand_delegates
from meshkit.config.egress import (
    Credentials,
    ExternalService,
    Files,
    external_clusters,
    external_services,
    external_virtual_hosts,
    fold_port_clusters,
    origination_tls,
    port_cluster,
)
from meshkit.config.envoyfilter import EnvoyFilter, rate_limit_for
from meshkit.config.gateway_deployments import internal_config
from meshkit.config.gateways import (
    Gateway,
    bound_hosts,
    gateways_for,
    match_scope,
    mutual_servers,
    tls_servers,
)
from meshkit.config.hosts import resolve_host
from meshkit.config.httproutes import (
    from_http_route,
    ingress_virtual_services,
    listener_tls_servers,
    mesh_virtual_services,
    selector_services,
)
from meshkit.config.meshconfig import mesh_config_of, mesh_settings
from meshkit.config.network_policy_snapshot import network_policy_section
from meshkit.config.proxyconfig import proxy_config_for
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.config.resources import (
    PREFIX_MARK,
    AuthorizationPolicy,
    Destination,
    DestinationRule,
    HeaderOperations,
    Headers,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRewrite,
    HTTPRoute,
    Operation,
    PeerAuthentication,
    Resource,
    Rule,
    Source,
    StringMatch,
    Telemetry,
    TrafficPolicy,
    VirtualService,
    parse_duration_ms,
)
from meshkit.config.secrets import credential_pairs, find_secret
from meshkit.config.selection import (
    authorization_policies_for,
    destination_rules_for,
    exported_to,
    labels_match,
    of_kind,
    resolve_mtls,
    resolve_tracing,
    virtual_services_for,
)
from meshkit.config.tls_routes import inbound_protocol, tcp_section, tls_section
from meshkit.config.user_volumes import proxy_files

SCHEMA = 1
DEFAULT_TRACE_SAMPLING = 1.0  # percent: Istio's meshConfig.defaultConfig.tracing.sampling default
DEFAULT_LB = "LEAST_REQUEST"
# Istio's default retry policy (pilot/pkg/networking/core/route/retry, Istio 1.24+): 2 attempts on
# these conditions and NO retriable status code. Istio <= 1.23 also had "retriable-status-codes"
# with 503; 1.24 dropped the 503 retry (it re-ran non-idempotent calls the app had answered).
DEFAULT_RETRY_ON = ["connect-failure", "refused-stream", "unavailable", "cancelled"]
DEFAULT_RETRY_ATTEMPTS = 2
LB_ALIASES = {"LEAST_CONN": "LEAST_REQUEST", "UNSPECIFIED": DEFAULT_LB}
OUTLIER_DEFAULTS = {"consecutive_5xx_errors": 5, "interval_ms": 10_000, "base_ejection_time_ms": 30_000,
                    "max_ejection_percent": 10}
_STATUS_CODE = re.compile(r"^\d{3}$")


def _ms(duration: str) -> int:
    return parse_duration_ms(duration)


def default_retry_policy() -> dict[str, Any]:
    """Istio's retry policy for a route whose VirtualService sets no ``retries``."""
    return {"attempts": DEFAULT_RETRY_ATTEMPTS, "per_try_timeout_ms": None,
            "retry_on": list(DEFAULT_RETRY_ON), "retriable_status_codes": []}


def snapshot_version(snapshot: Mapping[str, object]) -> str:
    """First 16 hex chars of sha256 over the canonical JSON of the content.

    ``version`` itself and ``revision`` (information only) are left out, so a store revision
    that does not change what this proxy does yields the same version and no push.
    """
    content = {k: v for k, v in snapshot.items() if k not in ("version", "revision")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def compile_snapshot(
    resources: Sequence[Resource], registry: RegistryView, node: Node, *, revision: int = 0,
    mesh_config: Mapping[str, Any] | None = None, trace_sampling: float = DEFAULT_TRACE_SAMPLING,
    jwks: Mapping[str, str | None] | None = None, jwks_errors: Mapping[str, str] | None = None,
    egress_hosts: Mapping[str, str] | None = None, real_dns: bool = False, versioned: bool = True,
) -> dict[str, Any]:
    """The snapshot for ``node`` (docs/snapshot.md; its fields and their types are `meshkit.proxy.schema`
    .SnapshotDoc, which this package cannot import: tests/config/test_snapshot_schema.py checks them).

    ``mesh_config`` is Istio's meshConfig; ``trace_sampling`` is its ``defaultConfig.tracing.sampling``
    (percent), which Telemetry resources override. ``jwks`` maps a RequestAuthentication ``jwksUri``
    to the key set the control plane fetched from it, ``jwks_errors`` to why it could not (see `authn`).
    Istio's mesh config ConfigMap, when applied, replaces ``mesh_config`` (`meshconfig`).
    ``egress_hosts`` maps ``"host:port"`` of external hosts to ``"address:port"`` (the local mesh's
    stand-ins) and ``real_dns`` lets other names resolve (snapshot ``egress``).
    ``versioned=False`` leaves ``version`` empty, for a caller that computes it anyway
    (`meshkit.control.rendering.SnapshotTemplate`): hashing a large snapshot serializes all of it
    in one call, 50 ms for a 1 MB VirtualService's, holding the GIL the control plane's loop needs.
    """
    resources = expand_delegates(resources)  # VirtualService delegation, as Istio merges it
    # Gateway API Gateways with their own proxy and TLSRoutes, as internal Istio config (gateway_deployments)
    resources = [*resources, *internal_config(resources)]
    mesh_config = mesh_config_of(resources, mesh_config)
    virtual_services = [vs for vs in of_kind(resources, VirtualService) if _applies_to(vs, node)]
    destination_rules = of_kind(resources, DestinationRule)
    if node.kind == "sidecar":  # a sidecar sees the rules exported to its namespace (Istio's exportTo)
        virtual_services = [vs for vs in virtual_services
                            if exported_to(vs.metadata.namespace, vs.spec.export_to, node.namespace)]
        destination_rules = [dr for dr in destination_rules
                             if exported_to(dr.metadata.namespace, dr.spec.export_to, node.namespace)]
        # Gateway API routes attached to Services (GAMMA): `httproutes`
        virtual_services = [*mesh_virtual_services(resources, registry), *virtual_services]
    tls_virtual_services = virtual_services
    # a VirtualService with only ``tls`` routes claims no HTTP host (its SNI routes: `tls_routes`)
    virtual_services = [vs for vs in virtual_services if vs.spec.http or not (vs.spec.tls or vs.spec.tcp)]
    peer_authentications = of_kind(resources, PeerAuthentication)
    services = sorted(registry.services, key=lambda s: (s.namespace == node.namespace, s.namespace, s.name))
    egress_hosts = dict(registry.external_hosts) if egress_hosts is None else egress_hosts
    real_dns = real_dns or registry.real_dns
    # ServiceEntry hosts (meshkit.config.egress): a sidecar's virtual hosts and clusters like any service's
    external = external_services(resources, node.namespace) if node.kind == "sidecar" else []
    # a gateway reaches ServiceEntry hosts too (an egress gateway's routes), through their clusters only
    external_targets = external if node.kind == "sidecar" else external_services(resources, node.namespace)
    selecting = gateways_for(node, resources) if node.kind == "gateway" else {}  # Gateways selecting it
    # a DestinationRule with a workloadSelector is for its namespace's workloads with those labels only
    destination_rules = [dr for dr in destination_rules if dr.spec.workload_selector is None or (
        dr.metadata.namespace == node.namespace
        and labels_match(dr.spec.workload_selector.match_labels, node.labels))]
    credentials = _credentials(resources, node)  # MUTUAL origination's credentialName
    files = proxy_files(resources, node.workload, node.namespace)  # its certificate files (userVolume)
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "revision": revision,
        "node": _node(node),
        "outbound": {
            "virtual_hosts": _gateway_virtual_hosts(node, resources, selecting)
            if node.kind == "gateway" else [
                *(_virtual_host(svc, node, virtual_services)
                  for svc in sorted(registry.services, key=lambda s: (s.namespace, s.name))),
                *external_virtual_hosts(external, virtual_services, lambda vs: _routes_of(vs, node),
                                        _route_to),
                *_other_virtual_hosts(node, registry, virtual_services, {s.host for s in external}),
            ]
        },
        "clusters": dict(sorted({
            **_clusters(services, registry, node, destination_rules, peer_authentications,
                        credentials=credentials, files=files),
            # Services the registry does not hold (reviews-v1 of bookinfo-versions.yaml): their selector
            **{cluster_name(svc.name, svc.namespace): _cluster(svc, "", None, endpoints, peer_authentications)
               for svc, endpoints in selector_services(resources, registry)},
            **_external_clusters(external_targets, destination_rules, egress_hosts, real_dns, credentials,
                                 files=files),
        }.items())),
        "inbound": _inbound(node, registry, peer_authentications, of_kind(resources, AuthorizationPolicy),
                            of_kind(resources, EnvoyFilter)),
        "trust": {"root_pem": registry.root_pem} if registry.root_pem is not None else None,
        # Istio's meshConfig, with the proxy's own ProxyConfig (proxy.istio.io/config) over defaultConfig
        "mesh": mesh_settings(mesh_config, proxy_config_for(resources, node.workload, node.namespace)),
        "tracing": resolve_tracing(node.namespace, node.labels, of_kind(resources, Telemetry),
                                   trace_sampling)[0],
        "egress": {"hosts": dict(sorted((egress_hosts or {}).items())), "real_dns": real_dns,
                   **({"ca_pem": registry.external_ca} if registry.external_ca else {})},
        "tls": tls_section(node, resources, tls_virtual_services, registry, selecting),
        "tcp": tcp_section(node, tls_virtual_services, registry, selecting, resources),
    }
    fold_port_clusters(body["outbound"]["virtual_hosts"], body["clusters"])  # routes to a host's port
    # the pod's Kubernetes NetworkPolicy egress, judged per destination address (network_policy_snapshot)
    network_policy = network_policy_section(resources, node, body["clusters"], body["egress"]["hosts"])
    if network_policy is not None:
        body["network_policy"] = network_policy
    # opaque TCP in front of the app (a Service port named tcp...): the sidecar relays bytes (tls_routes)
    own_service = registry.service(node.service, node.namespace) if node.service else None
    body["inbound"]["protocol"] = inbound_protocol(resources, own_service)
    if node.kind == "gateway":  # HTTPS servers with their Secrets' certificates (config.gateways)
        pairs = credential_pairs(resources)  # Istio Gateways' HTTPS servers, then Gateway API listeners
        servers = tls_servers(node, resources, pairs) + listener_tls_servers(resources, pairs)
        body["gateway_tls"] = {"servers": servers}
        mutual = mutual_servers(node, resources)
        if mutual["servers"]:  # ISTIO_MUTUAL servers: the mesh's mTLS on the gateway's own listener
            body["gateway_tls"]["istio_mutual"] = mutual
    selected = request_authentications_for(
        node.namespace, node.labels, of_kind(resources, RequestAuthentication))
    rules = compile_jwt(selected, jwks, jwks_errors)
    if rules is not None:  # absent when no RequestAuthentication selects this proxy
        body["inbound"]["jwt"] = rules  # a gateway verifies on its (outbound) listener
    return {"schema": SCHEMA, "version": snapshot_version(body) if versioned else "", **body}


# ---------------------------------------------------------------------------------------------
# node
# ---------------------------------------------------------------------------------------------


def _node(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "workload": node.workload,
        "instance": node.instance,
        "namespace": node.namespace,
        "service": node.service,
        "version": node.labels.get("version"),
        "labels": dict(sorted(node.labels.items())),
        "identity": node.identity,
        "kind": node.kind,
    }


def _applies_to(vs: VirtualService, node: Node) -> bool:
    """No ``gateways`` means the mesh (sidecars); ``mesh`` names sidecars, anything else gateways."""
    gateways = vs.spec.gateways
    if not gateways:
        return node.kind == "sidecar"
    if node.kind == "sidecar":
        return "mesh" in gateways
    return any(g != "mesh" for g in gateways)


# ---------------------------------------------------------------------------------------------
# outbound
# ---------------------------------------------------------------------------------------------


def _domains(svc: Service, node: Node) -> list[str]:
    fqdn, port = svc.fqdn, svc.port
    short = [svc.name, f"{svc.name}:{port}"] if svc.namespace == node.namespace else []
    return [*short, f"{svc.name}.{svc.namespace}", f"{svc.name}.{svc.namespace}:{port}",
            f"{svc.name}.{svc.namespace}.svc", fqdn, f"{fqdn}:{port}"]


def _virtual_host(svc: Service, node: Node, virtual_services: Sequence[VirtualService]) -> dict[str, Any]:
    claiming = virtual_services_for(svc.fqdn, svc.namespace, virtual_services)
    routes = _routes_of(claiming[0], node) if claiming else [_default_route(svc)]
    return {
        "name": f"{svc.fqdn}:{svc.port}",
        "service": svc.name,
        "domains": _domains(svc, node),
        "port": svc.port,
        "routes": routes,
    }


def _other_virtual_hosts(
    node: Node, registry: RegistryView, virtual_services: Sequence[VirtualService],
    external: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Virtual hosts for VirtualService hosts that name no registry service: external names and
    wildcards (``*``, ``*.example.com``), typically bound to a gateway. The first VirtualService
    by (namespace, name) that claims a host wins."""
    chosen: dict[str, VirtualService] = {}
    for vs in virtual_services:
        for host in vs.spec.hosts:
            resolved = resolve_host(host, vs.metadata.namespace)
            if host.strip().lower() in external:
                continue  # a ServiceEntry host: its virtual host is the ServiceEntry's
            if resolved.name is None or registry.service(resolved.name, resolved.namespace or "") is None:
                chosen.setdefault(host.strip().lower(), vs)
    return [_host_only_virtual_host(host, vs, node) for host, vs in sorted(chosen.items())]


def _gateway_virtual_hosts(node: Node, resources: Sequence[Resource],
                           selected: Mapping[tuple[str, str], Gateway]) -> list[dict[str, Any]]:
    """A gateway serves only the hosts bound by a Gateway selecting it and a VirtualService naming that
    Gateway (`meshkit.config.gateways`); any other Host finds no virtual host: 404 ``NR``, as in Istio."""
    return [_host_only_virtual_host(host, vs, node, selected)
            for host, vs in _gateway_bindings(node, resources)]


def _host_only_virtual_host(host: str, vs: VirtualService, node: Node,
                            selected: Mapping[tuple[str, str], Gateway] | None = None) -> dict[str, Any]:
    """A virtual host that is one name and no registry service: ``vs``'s routes for ``host``."""
    return {
        "name": host,
        "service": None,
        "domains": [host],
        "port": None,
        "routes": _routes_of(vs, node, selected),
    }


def _gateway_bindings(node: Node, resources: Sequence[Resource]) -> list[tuple[str, VirtualService]]:
    """Istio Gateway + VirtualService bindings, and HTTPRoutes attached to a Gateway API Gateway
    (`httproutes`); the HTTPRoute wins a host both claim, as for sidecars."""
    chosen = dict(bound_hosts(node, resources))
    if node.labels.get("istio") == "ingressgateway":  # the mesh's one ingress serves Gateway API Gateways
        chosen.update(ingress_virtual_services(resources))
    return sorted(chosen.items())


def _routes_of(vs: VirtualService, node: Node,
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


def cluster_name(service: str, namespace: str, subset: str = "") -> str:
    """The snapshot's key of a registry service's cluster: ``<service>.<namespace>|<subset>``
    (``httpbin.foo|``, ``reviews.default|v1``), so same-named services of two namespaces never
    share one. Envoy's own name (``outbound|<port>|<subset>|<fqdn>``) is what the sidecar's
    stats show (`meshkit.proxy.cluster_stats`). External hosts are ``<host>|<subset>``."""
    return f"{service}.{namespace}|{subset}"


def _default_route(svc: Service) -> dict[str, Any]:
    return _route_to(cluster_name(svc.name, svc.namespace))


def _route_to(cluster: str) -> dict[str, Any]:
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
        "timeout_ms": None if fault or http.timeout is None else _ms(http.timeout),
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
        delay = {"fixed_delay_ms": _ms(d.fixed_delay), "percent": float(percent)}
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
        "per_try_timeout_ms": _ms(retries.per_try_timeout) if retries.per_try_timeout else None,
        "retry_on": retry_on,
        "retriable_status_codes": codes,
    }


# ---------------------------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------------------------


def _credentials(resources: Sequence[Resource], node: Node) -> Credentials:
    """A DestinationRule's ``credentialName`` as this proxy sees it: the Secret of its own namespace
    (Istio 1.20+ for sidecars; a gateway's is istio-system) -> (cert, key, ca.crt)."""
    def find(name: str) -> tuple[str, str, str | None] | None:
        secret = find_secret(resources, name, [node.namespace])
        if secret is None:
            return None
        cert, key = secret.certificate_pair()
        return cert, key, secret.ca_certificate()
    return find


def _clusters(
    services: Sequence[Service],
    registry: RegistryView,
    node: Node,
    destination_rules: Sequence[DestinationRule],
    peer_authentications: Sequence[PeerAuthentication],
    *,
    credentials: Credentials | None = None,
    files: Files | None = None,
) -> dict[str, Any]:
    clusters: dict[str, Any] = {}
    for svc in services:
        endpoints = sorted(registry.endpoints_of(svc.name, svc.namespace), key=lambda e: (e.instance, e.port))
        rules = destination_rules_for(svc.fqdn, svc.namespace, node.namespace, destination_rules)
        rule = rules[0] if rules else None
        top = rule.spec.traffic_policy if rule else None
        clusters[cluster_name(svc.name, svc.namespace)] = _cluster(
            svc, "", top, endpoints, peer_authentications, credentials=credentials, files=files)
        for subset in (rule.spec.subsets or []) if rule else []:
            selected = [e for e in endpoints if labels_match(subset.labels, e.labels)]
            policy = _merge_policy(top, subset.traffic_policy)
            clusters[cluster_name(svc.name, svc.namespace, subset.name)] = _cluster(
                svc, subset.name, policy, selected, peer_authentications, credentials=credentials,
                files=files)
            # a portLevelSettings port the Service is reached on besides its own (the egress gateway's
            # 443 beside 80): a cluster of its own, which a route naming that port uses
            for port in _other_ports(policy, svc.port):
                clusters[port_cluster(svc.fqdn, port, subset.name)] = _cluster(
                    replace(svc, port=port), subset.name, policy, selected, peer_authentications,
                    credentials=credentials, files=files)
        for port in _other_ports(top, svc.port):
            clusters[port_cluster(svc.fqdn, port)] = _cluster(
                replace(svc, port=port), "", top, endpoints, peer_authentications, credentials=credentials,
                files=files)
    return dict(sorted(clusters.items()))


def _other_ports(policy: TrafficPolicy | None, port: int) -> list[int]:
    """The ports ``policy``'s portLevelSettings name other than the Service's ``port``."""
    return sorted({level.port.number for level in (policy.port_level_settings or []) if policy is not None
                   and level.port.number != port}) if policy is not None else []


def _external_clusters(
    external: Sequence[ExternalService], destination_rules: Sequence[DestinationRule],
    hosts: Mapping[str, str], real_dns: bool, credentials: Credentials | None = None,
    *, files: Files | None = None,
) -> dict[str, Any]:
    def cluster(host: str, port: int, subset: str, policy: TrafficPolicy | None,
                endpoints: list[dict[str, Any]]) -> dict[str, Any]:
        policy = policy.for_port(port) if policy is not None else None
        lb = policy.load_balancer.simple if policy and policy.load_balancer else None
        return {
            "service": host, "namespace": None, "subset": subset, "port": port,
            "lb": LB_ALIASES.get(lb, lb) if lb else DEFAULT_LB,
            "endpoints": endpoints,
            "connection_pool": _connection_pool(policy),
            "outlier_detection": _outlier_detection(policy),
            "tls": origination_tls(policy, host, credentials, files),  # outside the mesh: no auto mTLS
        }

    return external_clusters(external, destination_rules, hosts, real_dns,
                             cluster=cluster, merge=_merge_policy)


def _merge_policy(top: TrafficPolicy | None, subset: TrafficPolicy | None) -> TrafficPolicy | None:
    """Istio's merge: each top-level setting of the subset policy replaces the DestinationRule's."""
    if subset is None:
        return top
    if top is None:
        return subset
    overrides = {name: getattr(subset, name) for name in type(subset).model_fields
                 if getattr(subset, name) is not None}
    return top.model_copy(update=overrides)


def _endpoint(e: Endpoint) -> dict[str, Any]:
    return {
        "address": e.address, "port": e.port, "instance": e.instance, "workload": e.workload,
        "version": e.version, "labels": dict(sorted(e.labels.items())), "identity": e.identity,
        "has_sidecar": e.has_sidecar, "healthy": e.healthy,
    }


def _cluster(
    svc: Service,
    subset: str,
    policy: TrafficPolicy | None,
    endpoints: Sequence[Endpoint],
    peer_authentications: Sequence[PeerAuthentication],
    *,
    credentials: Credentials | None = None,
    files: Files | None = None,
) -> dict[str, Any]:
    policy = policy.for_port(svc.port) if policy is not None else None
    lb = policy.load_balancer.simple if policy and policy.load_balancer else None
    return {
        "service": svc.name,
        "namespace": svc.namespace,
        "subset": subset,
        "port": svc.port,
        "lb": LB_ALIASES.get(lb, lb) if lb else DEFAULT_LB,
        "endpoints": [_endpoint(e) for e in endpoints],
        "connection_pool": _connection_pool(policy),
        "outlier_detection": _outlier_detection(policy),
        "tls": _tls(policy, endpoints, peer_authentications) if not _originates(policy)
        else origination_tls(policy, svc.fqdn, credentials, files),
    }


def _connection_pool(policy: TrafficPolicy | None) -> dict[str, Any] | None:
    if policy is None or policy.connection_pool is None:
        return None
    tcp, http = policy.connection_pool.tcp, policy.connection_pool.http
    return {
        "max_connections": tcp.max_connections if tcp else None,
        "connect_timeout_ms": _ms(tcp.connect_timeout) if tcp and tcp.connect_timeout else None,
        "http1_max_pending_requests": http.http1_max_pending_requests if http else None,
        "max_requests": http.http2_max_requests if http else None,
        "max_requests_per_connection": (http.max_requests_per_connection or 0) if http else 0,
        "max_retries": http.max_retries if http else None,
    }


def _outlier_detection(policy: TrafficPolicy | None) -> dict[str, Any] | None:
    if policy is None or policy.outlier_detection is None:
        return None
    od = policy.outlier_detection
    return {
        "consecutive_5xx_errors": (
            od.consecutive_5xx_errors if od.consecutive_5xx_errors is not None
            else OUTLIER_DEFAULTS["consecutive_5xx_errors"]
        ),
        "consecutive_gateway_errors": od.consecutive_gateway_errors,
        "interval_ms": _ms(od.interval) if od.interval else OUTLIER_DEFAULTS["interval_ms"],
        "base_ejection_time_ms": (
            _ms(od.base_ejection_time) if od.base_ejection_time else OUTLIER_DEFAULTS["base_ejection_time_ms"]
        ),
        "max_ejection_percent": (
            od.max_ejection_percent if od.max_ejection_percent is not None
            else OUTLIER_DEFAULTS["max_ejection_percent"]
        ),
    }


def _tls(
    policy: TrafficPolicy | None,
    endpoints: Sequence[Endpoint],
    peer_authentications: Sequence[PeerAuthentication],
) -> dict[str, Any]:
    """DR mode when set; otherwise Istio's auto mTLS: mutual TLS when every endpoint has a sidecar
    and none of them has PeerAuthentication mode DISABLE."""
    if policy is not None and policy.tls is not None:
        mode = policy.tls.mode
    else:
        automatic = bool(endpoints) and all(
            e.has_sidecar and _mtls_mode(e, peer_authentications) != "DISABLE" for e in endpoints
        )
        mode = "ISTIO_MUTUAL" if automatic else "DISABLE"
    identities = sorted({e.identity for e in endpoints}) if mode == "ISTIO_MUTUAL" else []
    found: dict[str, Any] = {"mode": mode, "server_identities": identities}
    sni = policy.tls.sni if policy is not None and policy.tls is not None else None
    if mode == "ISTIO_MUTUAL" and sni:  # the name a gateway's ISTIO_MUTUAL server is chosen by
        found["sni"] = sni
    return found


def _originates(policy: TrafficPolicy | None) -> bool:
    """SIMPLE or MUTUAL: the proxy originates TLS with its own settings (no workload certificate)."""
    return policy is not None and policy.tls is not None and policy.tls.mode in ("SIMPLE", "MUTUAL")


def _mtls_mode(endpoint: Endpoint, peer_authentications: Sequence[PeerAuthentication]) -> object:
    return resolve_mtls(endpoint.namespace, endpoint.labels, peer_authentications)[0]["mode"]


# ---------------------------------------------------------------------------------------------
# inbound
# ---------------------------------------------------------------------------------------------


def _inbound(
    node: Node,
    registry: RegistryView,
    peer_authentications: Sequence[PeerAuthentication],
    authorization_policies: Sequence[AuthorizationPolicy],
    envoy_filters: Sequence[EnvoyFilter] = (),
) -> dict[str, Any]:
    service = registry.service(node.service, node.namespace) if node.service else None
    has_app = node.app_port is not None and node.kind == "sidecar"
    app = {"address": "127.0.0.1", "port": node.app_port} if has_app else None
    mtls, _ = resolve_mtls(node.namespace, node.labels, peer_authentications)
    authz: dict[str, list[dict[str, Any]]] = {"deny": [], "allow": [], "audit": []}
    for policy in authorization_policies_for(node.namespace, node.labels, authorization_policies):
        action = policy.spec.effective_action.lower()
        if action in ("allow", "deny") and _dry_run(policy):  # shadow only: evaluated and logged
            action = f"dry_run_{action}"
        authz.setdefault(action, []).append(_authz_policy(policy))
    for policies in authz.values():
        policies.sort(key=lambda p: p["name"])
    return {
        "app": app,
        "service_port": service.port if service else node.app_port,
        "mtls": mtls,
        "authz": authz,
        "rate_limit": rate_limit_for(node.namespace, node.labels, list(envoy_filters))
        if node.kind == "sidecar" else None,
    }


DRY_RUN_ANNOTATION = "istio.io/dry-run"


def _dry_run(policy: AuthorizationPolicy) -> bool:
    """Istio's ``istio.io/dry-run: "true"`` annotation (ALLOW and DENY policies): not enforced."""
    annotations = policy.metadata.annotations or {}
    return str(annotations.get(DRY_RUN_ANNOTATION, "")).strip().lower() == "true"


def _authz_policy(policy: AuthorizationPolicy) -> dict[str, Any]:
    return {
        "name": f"{policy.metadata.namespace}/{policy.metadata.name}",
        "rules": [_authz_rule(rule) for rule in policy.spec.rules or []],
    }


_SOURCE_KEYS = ("principals", "namespaces", "ip_blocks", "remote_ip_blocks", "request_principals")
_OPERATION_KEYS = ("hosts", "methods", "paths", "ports")


def _lists(model: Source | Operation, names: Sequence[str]) -> dict[str, list[str]]:
    """Every field and its ``not_`` form, ``[]`` when unset (Istio treats an empty list as unset)."""
    out: dict[str, list[str]] = {}
    for name in names:
        out[name] = list(getattr(model, name) or [])
        out[f"not_{name}"] = list(getattr(model, f"not_{name}") or [])
    return out


def _authz_rule(rule: Rule) -> dict[str, Any]:
    return {
        "from": [_lists(f.source, _SOURCE_KEYS) for f in rule.from_ or []],
        "to": [_lists(t.operation, _OPERATION_KEYS) for t in rule.to or []],
        "when": [
            {"key": c.key, "values": list(c.values or []), "not_values": list(c.not_values or [])}
            for c in rule.when or []
        ],
    }
