"""The snapshot's ``clusters``: each registry service's (and subset's, and portLevelSettings port's)
cluster, and ServiceEntry hosts' (through `egress`), with their endpoints, load balancer, connection
pool, outlier detection and TLS (docs/snapshot.md, docs/config-reference.md).

Called by `meshkit.config.compile.compile_snapshot`, which assembles the section; `cluster_name` is
also how `compile_routes` names a route's destination. Which DestinationRule applies is
`selection`'s business, the mTLS mode a PeerAuthentication gives an endpoint too.

It must not compile routes or virtual hosts, nor know which route uses a cluster; like all of
`meshkit.config` it is pure data in, plain JSON out: no I/O, no sockets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from meshkit.config.egress import (
    Credentials,
    ExternalService,
    Files,
    external_clusters,
    origination_tls,
    port_cluster,
)
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.config.resources import (
    DestinationRule,
    PeerAuthentication,
    Resource,
    TrafficPolicy,
    parse_duration_ms,
)
from meshkit.config.secrets import find_secret
from meshkit.config.selection import destination_rules_for, labels_match, resolve_mtls

DEFAULT_LB = "LEAST_REQUEST"
LB_ALIASES = {"LEAST_CONN": "LEAST_REQUEST", "UNSPECIFIED": DEFAULT_LB}
OUTLIER_DEFAULTS = {"consecutive_5xx_errors": 5, "interval_ms": 10_000, "base_ejection_time_ms": 30_000,
                    "max_ejection_percent": 10}


def cluster_name(service: str, namespace: str, subset: str = "") -> str:
    """The snapshot's key of a registry service's cluster: ``<service>.<namespace>|<subset>``
    (``httpbin.foo|``, ``reviews.default|v1``), so same-named services of two namespaces never
    share one. Envoy's own name (``outbound|<port>|<subset>|<fqdn>``) is what the sidecar's
    stats show (`meshkit.proxy.cluster_stats`). External hosts are ``<host>|<subset>``."""
    return f"{service}.{namespace}|{subset}"


def credentials_for(resources: Sequence[Resource], node: Node) -> Credentials:
    """A DestinationRule's ``credentialName`` as this proxy sees it: the Secret of its own namespace
    (Istio 1.20+ for sidecars; a gateway's is istio-system) -> (cert, key, ca.crt)."""
    def find(name: str) -> tuple[str, str, str | None] | None:
        secret = find_secret(resources, name, [node.namespace])
        if secret is None:
            return None
        cert, key = secret.certificate_pair()
        return cert, key, secret.ca_certificate()
    return find


def service_clusters(
    services: Sequence[Service],
    registry: RegistryView,
    node: Node,
    destination_rules: Sequence[DestinationRule],
    peer_authentications: Sequence[PeerAuthentication],
    *,
    credentials: Credentials | None = None,
    files: Files | None = None,
) -> dict[str, Any]:
    """The clusters of registry ``services``: each one's, its DestinationRule's subsets', and a cluster per
    other portLevelSettings port, by name (`cluster_name`, `egress.port_cluster`)."""
    clusters: dict[str, Any] = {}
    for svc in services:
        endpoints = sorted(registry.endpoints_of(svc.name, svc.namespace), key=lambda e: (e.instance, e.port))
        rules = destination_rules_for(svc.fqdn, svc.namespace, node.namespace, destination_rules)
        rule = rules[0] if rules else None
        top = rule.spec.traffic_policy if rule else None
        clusters[cluster_name(svc.name, svc.namespace)] = service_cluster(
            svc, "", top, endpoints, peer_authentications, credentials=credentials, files=files)
        for subset in (rule.spec.subsets or []) if rule else []:
            selected = [e for e in endpoints if labels_match(subset.labels, e.labels)]
            policy = _merge_policy(top, subset.traffic_policy)
            clusters[cluster_name(svc.name, svc.namespace, subset.name)] = service_cluster(
                svc, subset.name, policy, selected, peer_authentications, credentials=credentials,
                files=files)
            # a portLevelSettings port the Service is reached on besides its own (the egress gateway's
            # 443 beside 80): a cluster of its own, which a route naming that port uses
            for port in _other_ports(policy, svc.port):
                clusters[port_cluster(svc.fqdn, port, subset.name)] = service_cluster(
                    replace(svc, port=port), subset.name, policy, selected, peer_authentications,
                    credentials=credentials, files=files)
        for port in _other_ports(top, svc.port):
            clusters[port_cluster(svc.fqdn, port)] = service_cluster(
                replace(svc, port=port), "", top, endpoints, peer_authentications, credentials=credentials,
                files=files)
    return dict(sorted(clusters.items()))


def _other_ports(policy: TrafficPolicy | None, port: int) -> list[int]:
    """The ports ``policy``'s portLevelSettings name other than the Service's ``port``."""
    return sorted({level.port.number for level in (policy.port_level_settings or []) if policy is not None
                   and level.port.number != port}) if policy is not None else []


def external_service_clusters(
    external: Sequence[ExternalService], destination_rules: Sequence[DestinationRule],
    hosts: Mapping[str, str], real_dns: bool, credentials: Credentials | None = None,
    *, files: Files | None = None,
) -> dict[str, Any]:
    """ServiceEntry hosts' clusters (`egress.external_clusters`): TLS only as their DestinationRule
    originates it."""
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


def service_cluster(
    svc: Service,
    subset: str,
    policy: TrafficPolicy | None,
    endpoints: Sequence[Endpoint],
    peer_authentications: Sequence[PeerAuthentication],
    *,
    credentials: Credentials | None = None,
    files: Files | None = None,
) -> dict[str, Any]:
    """One registry service's cluster (``subset`` "" for the whole service) under ``policy``."""
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
        "connect_timeout_ms": parse_duration_ms(tcp.connect_timeout) if tcp and tcp.connect_timeout else None,
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
        "interval_ms": parse_duration_ms(od.interval) if od.interval else OUTLIER_DEFAULTS["interval_ms"],
        "base_ejection_time_ms": (
            parse_duration_ms(od.base_ejection_time) if od.base_ejection_time
            else OUTLIER_DEFAULTS["base_ejection_time_ms"]
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
