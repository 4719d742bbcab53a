"""Resources + service registry -> the per-proxy snapshot of docs/snapshot.md (a plain JSON dict).

`compile_snapshot` is a pure, deterministic function: the same input gives the same dict and the
same ``version`` (a hash of the content). Which resource applies where follows Istio's precedence
(see `selection`); how each Istio field becomes a snapshot field is documented in
docs/config-reference.md.

This module is the compiler's entry point (everyone imports it, never its parts): it selects what
applies to the node and assembles the snapshot from the sections other modules compile:
``outbound.virtual_hosts`` (`compile_virtual_hosts`, with each VirtualService's routes from
`compile_routes`), ``clusters`` (`compile_clusters`), ``inbound`` (`compile_inbound`), ``tls``/``tcp``
(`tls_routes`), ``egress`` (`egress`), ``mesh`` (`meshconfig`), ``network_policy``
(`network_policy_snapshot`), ``gateway_tls`` (`gateways`, `httproutes`) and ``inbound.jwt``
(`authn`). It must not compile a section's contents itself; like all of `meshkit.config` it
does no I/O and opens no sockets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from meshkit.config.authn import RequestAuthentication, compile_jwt, request_authentications_for
from meshkit.config.compile_clusters import (
    DEFAULT_LB,
    LB_ALIASES,
    OUTLIER_DEFAULTS,
    cluster_name,
    credentials_for,
    external_service_clusters,
    service_cluster,
    service_clusters,
)
from meshkit.config.compile_inbound import DRY_RUN_ANNOTATION, inbound_section
from meshkit.config.compile_routes import DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON, default_retry_policy
from meshkit.config.compile_virtual_hosts import gateway_virtual_hosts, sidecar_virtual_hosts
from meshkit.config.delegates import expand_delegates
from meshkit.config.egress import external_services, fold_port_clusters
from meshkit.config.envoyfilter import EnvoyFilter
from meshkit.config.gateway_deployments import internal_config
from meshkit.config.gateways import gateways_for, mutual_servers, tls_servers
from meshkit.config.httproutes import listener_tls_servers, mesh_virtual_services, selector_services
from meshkit.config.meshconfig import mesh_config_of, mesh_settings
from meshkit.config.network_policy_snapshot import network_policy_section
from meshkit.config.proxyconfig import proxy_config_for
from meshkit.config.registry import Node, RegistryView
from meshkit.config.resources import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    Resource,
    Telemetry,
    VirtualService,
)
from meshkit.config.secrets import credential_pairs
from meshkit.config.selection import exported_to, labels_match, of_kind, resolve_tracing
from meshkit.config.tls_routes import inbound_protocol, tcp_section, tls_section
from meshkit.config.user_volumes import proxy_files

# What importers use, here since before the compiler had parts; the parts' names stay importable here.
__all__ = [
    "DEFAULT_LB",
    "DEFAULT_RETRY_ATTEMPTS",
    "DEFAULT_RETRY_ON",
    "DEFAULT_TRACE_SAMPLING",
    "DRY_RUN_ANNOTATION",
    "LB_ALIASES",
    "OUTLIER_DEFAULTS",
    "SCHEMA",
    "cluster_name",
    "compile_snapshot",
    "default_retry_policy",
    "snapshot_version",
]

SCHEMA = 1
DEFAULT_TRACE_SAMPLING = 1.0  # percent: Istio's meshConfig.defaultConfig.tracing.sampling default


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
    credentials = credentials_for(resources, node)  # MUTUAL origination's credentialName
    files = proxy_files(resources, node.workload, node.namespace)  # its certificate files (userVolume)
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "revision": revision,
        "node": _node(node),
        "outbound": {
            "virtual_hosts": gateway_virtual_hosts(node, resources, selecting)
            if node.kind == "gateway" else sidecar_virtual_hosts(node, registry, virtual_services, external)
        },
        "clusters": dict(sorted({
            **service_clusters(services, registry, node, destination_rules, peer_authentications,
                               credentials=credentials, files=files),
            # Services the registry does not hold (reviews-v1 of bookinfo-versions.yaml): their selector
            **{cluster_name(svc.name, svc.namespace):
               service_cluster(svc, "", None, endpoints, peer_authentications)
               for svc, endpoints in selector_services(resources, registry)},
            **external_service_clusters(external_targets, destination_rules, egress_hosts, real_dns,
                                        credentials, files=files),
        }.items())),
        "inbound": inbound_section(node, registry, peer_authentications,
                                   of_kind(resources, AuthorizationPolicy), of_kind(resources, EnvoyFilter)),
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
