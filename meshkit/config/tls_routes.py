"""TLS the mesh carries without opening it: VirtualService ``tls`` routes and ServiceEntry TLS ports.

An app's own HTTPS (``curl https://edition.cnn.com``) reaches its sidecar as a tunnel
(``CONNECT``, the local mesh's form of Istio's iptables capture of port 443) and a gateway's
``PASSTHROUGH`` server receives it as raw TLS. Neither opens it: as Envoy's ``tls_inspector``
plus a TCP proxy, the proxy reads the SNI of the ClientHello and picks a destination by the
snapshot section this module compiles (docs/snapshot.md, ``tls``):

- ``routes``: the ``tls`` routes that apply to this proxy, in order (the first match wins), one
  entry per match: ``sni_hosts`` (exact or ``*.example.com``), ``port`` (or null: any), and the
  weighted ``destinations``, each a registry service's cluster (``cluster``, e.g. the egress
  gateway's subset ``cnn``) or an external host (``cluster`` null: the proxy resolves
  ``host:port`` with the snapshot's ``egress`` map). A sidecar takes the routes whose match is for
  ``mesh``; a gateway those bound to a Gateway that selects it and has a PASSTHROUGH server whose
  hosts cover the SNI (the route's ``sni_hosts`` are narrowed to them).
- ``hosts``: ``host:port`` of the TLS/HTTPS/TCP ports of the ServiceEntries visible to the proxy
  (wildcards kept): what REGISTRY_ONLY lets through with no route.

Pure data: no sockets, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshkit.config.egress import HTTP_PROTOCOLS, ServiceEntry
from meshkit.config.gateways import MESH, Gateway, gateway_key, intersect_hosts, passthrough_servers
from meshkit.config.hosts import resolve_host
from meshkit.config.registry import Node, RegistryView
from meshkit.config.resources import Resource, TLSMatchAttributes, TLSRoute, VirtualService
from meshkit.config.selection import exported_to, labels_match

DEFAULT_TLS_PORT = 443


def tls_section(node: Node, resources: Sequence[Resource], virtual_services: Sequence[VirtualService],
                registry: RegistryView, selecting: Mapping[tuple[str, str], Gateway]) -> dict[str, Any]:
    """The snapshot's ``tls`` section for ``node`` (``virtual_services``: those that apply to it;
    ``selecting``: the Gateways selecting a gateway proxy)."""
    routes: list[dict[str, Any]] = []
    for vs in sorted(virtual_services, key=lambda v: (v.metadata.namespace, v.metadata.name)):
        for index, route in enumerate(vs.spec.tls or []):
            for m in route.match:
                sni_hosts = _sni_for(node, vs, m, selecting)
                if sni_hosts:
                    routes.append({
                        "name": f"{vs.metadata.namespace}/{vs.metadata.name}#tls{index}",
                        "sni_hosts": sni_hosts, "port": m.port,
                        "destinations": _destinations(route, m, vs.metadata.namespace, registry),
                    })
    return {"routes": routes, "hosts": _registered_tls_hosts(resources, node.namespace)}


def _sni_for(node: Node, vs: VirtualService, m: TLSMatchAttributes,
             selecting: Mapping[tuple[str, str], Gateway]) -> list[str]:
    """The match's SNI hosts this proxy takes it for ([] when the match is not for this proxy)."""
    wanted = [h.strip().lower() for h in m.sni_hosts]
    if not labels_match(m.source_labels, node.labels):
        return []
    references = m.gateways if m.gateways is not None else (vs.spec.gateways or [MESH])
    if node.kind != "gateway":
        return wanted if MESH in references else []
    covered: list[str] = []
    for reference in references:
        if reference == MESH:
            continue
        gateway = selecting.get(gateway_key(reference, vs.metadata.namespace))
        if gateway is None:
            continue
        for server in passthrough_servers(gateway):
            if m.port is not None and server.port.number != m.port:
                continue
            for entry in server.hosts:
                server_host = entry.partition("/")[2] if "/" in entry else entry
                for host in wanted:
                    narrowed = intersect_hosts(server_host.lower(), host)
                    if narrowed is not None and narrowed not in covered:
                        covered.append(narrowed)
    return covered


def _destinations(route: TLSRoute, m: TLSMatchAttributes, namespace: str,
                  registry: RegistryView) -> list[dict[str, Any]]:
    found = []
    for weighted in route.route:
        destination = weighted.destination
        port = destination.port.number if destination.port is not None else (m.port or DEFAULT_TLS_PORT)
        resolved = resolve_host(destination.host, namespace)
        service = registry.service(resolved.name, resolved.namespace or "") \
            if resolved.name is not None else None
        if service is not None:
            cluster: str | None = f"{service.name}.{service.namespace}|{destination.subset or ''}"
            host = service.fqdn
        else:
            cluster, host = None, resolved.host
        weight = weighted.weight if weighted.weight is not None else (100 if len(route.route) == 1 else 0)
        found.append({"host": host, "port": port, "cluster": cluster, "weight": weight})
    return found


def _registered_tls_hosts(resources: Sequence[Resource], namespace: str) -> list[str]:
    hosts: set[str] = set()
    for entry in resources:
        if not isinstance(entry, ServiceEntry):
            continue
        if not exported_to(entry.metadata.namespace, entry.spec.export_to, namespace):
            continue
        for port in entry.spec.ports:
            if (port.protocol or "").upper() in HTTP_PROTOCOLS:
                continue  # HTTP ports are virtual hosts (config.egress)
            hosts.update(f"{host.strip().lower()}:{port.number}" for host in entry.spec.hosts)
    return sorted(hosts)
