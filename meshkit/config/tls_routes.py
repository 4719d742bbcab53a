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

Opaque TCP (Istio's "TCP Traffic Shifting": a Gateway server with ``protocol: TCP`` and
VirtualService ``tcp`` routes) is the section ``tcp``: a gateway's routes, matched by port, with
weighted destinations of the same shape. A workload whose Service names its port ``tcp``/``tcp-*``
(or ``appProtocol: tcp``) gets ``inbound.protocol: "tcp"``: its sidecar relays bytes to the app
instead of parsing HTTP. A sidecar gets the ``tcp`` routes of the VirtualServices bound to ``mesh``
(``hosts`` names the destination, ``port`` the port connected to, as Istio's outbound TCP listener
per service port), then one default route per registry Service port (``hosts`` its names as the
sidecar's namespace spells them, its own cluster): an app's opaque TCP reaches its sidecar as a
``CONNECT host:port`` tunnel (``nc tcp-echo 9000`` under ``meshkit exec``) and goes by them.

A port named ``https``/``tls`` (Istio's TLS protocols, opaque to the sidecar) is ``"tcp"`` too, and
so is a port with no name where Istio's protocol sniffing would see TLS: the pods' own
``nginx.conf`` listens with ``ssl`` on it (`volumes.tls_ports`; "Ingress Gateway without TLS
Termination" passes the client's TLS through the ingress to such an nginx).

Pure data: no sockets, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshkit.config.egress import HTTP_PROTOCOLS, ServiceEntry
from meshkit.config.gateways import (
    MESH,
    Gateway,
    gateway_key,
    intersect_hosts,
    passthrough_servers,
    tcp_servers,
)
from meshkit.config.hosts import resolve_host
from meshkit.config.registry import Node, RegistryView, Service
from meshkit.config.resources import (
    L4MatchAttributes,
    Resource,
    RouteDestination,
    TCPRoute,
    TLSMatchAttributes,
    TLSRoute,
    VirtualService,
)
from meshkit.config.selection import exported_to, labels_match
from meshkit.config.volumes import tls_ports
from meshkit.config.workloads import Service as KubeService

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
                        "destinations": _destinations(route, m.port, vs.metadata.namespace, registry),
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


def _destinations(route: TLSRoute | TCPRoute, match_port: int | None, namespace: str,
                  registry: RegistryView, *, service_port: bool = False) -> list[dict[str, Any]]:
    """``service_port``: a destination without port and a match without one goes to its Service's port
    (a sidecar's ``tcp`` routes), else to 443."""
    found = []
    targets: list[RouteDestination] = route.route
    for weighted in targets:
        destination = weighted.destination
        resolved = resolve_host(destination.host, namespace)
        service = registry.service(resolved.name, resolved.namespace or "") \
            if resolved.name is not None else None
        fallback = service.port if service_port and service is not None else DEFAULT_TLS_PORT
        port = destination.port.number if destination.port is not None else (match_port or fallback)
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


def tcp_section(node: Node, virtual_services: Sequence[VirtualService], registry: RegistryView,
                selecting: Mapping[tuple[str, str], Gateway],
                resources: Sequence[Resource] = ()) -> dict[str, Any]:
    """The snapshot's ``tcp`` section: a gateway's ``tcp`` routes bound to its TCP servers, in order; a
    sidecar's ``mesh`` routes by destination host and port, then its default routes."""
    routes: list[dict[str, Any]] = []
    if node.kind != "gateway":
        return {"routes": [*_mesh_tcp_routes(node, virtual_services, registry),
                           *_default_tcp_routes(node, registry, resources)]}
    for vs in sorted(virtual_services, key=lambda v: (v.metadata.namespace, v.metadata.name)):
        for index, route in enumerate(vs.spec.tcp or []):
            for port in _tcp_ports(node, vs, route, selecting):
                routes.append({"name": f"{vs.metadata.namespace}/{vs.metadata.name}#tcp{index}", "port": port,
                               "hosts": None,
                               "destinations": _destinations(route, port, vs.metadata.namespace, registry)})
    return {"routes": routes}


def _tcp_ports(node: Node, vs: VirtualService, route: TCPRoute,
               selecting: Mapping[tuple[str, str], Gateway]) -> list[int]:
    """The TCP server ports of the Gateways selecting ``node`` that a match of ``route`` takes."""
    ports: list[int] = []
    matches: list[L4MatchAttributes | None] = list(route.match or []) or [None]
    for m in matches:
        if m is not None and not labels_match(m.source_labels, node.labels):
            continue
        references = (m.gateways if m is not None else None) or vs.spec.gateways or []
        for reference in references:
            if reference == MESH:
                continue
            gateway = selecting.get(gateway_key(reference, vs.metadata.namespace))
            for server in tcp_servers(gateway) if gateway is not None else ():
                wanted = m.port if m is not None else None
                if (wanted is None or server.port.number == wanted) and server.port.number not in ports:
                    ports.append(server.port.number)
    return ports


def _mesh_tcp_routes(node: Node, virtual_services: Sequence[VirtualService],
                     registry: RegistryView) -> list[dict[str, Any]]:
    """A sidecar's ``tcp`` routes: those of VirtualServices for ``mesh`` whose match takes this proxy
    (source labels), by the VirtualService's hosts (as this proxy's namespace names them) and port."""
    routes: list[dict[str, Any]] = []
    for vs in sorted(virtual_services, key=lambda v: (v.metadata.namespace, v.metadata.name)):
        if not vs.spec.tcp:
            continue
        hosts = _names_of(vs.spec.hosts, vs.metadata.namespace, node, registry)
        for index, route in enumerate(vs.spec.tcp):
            matches: list[L4MatchAttributes | None] = list(route.match or []) or [None]
            for m in matches:
                references = (m.gateways if m is not None else None) or vs.spec.gateways or [MESH]
                if MESH not in references:
                    continue
                if m is not None and not labels_match(m.source_labels, node.labels):
                    continue
                port = m.port if m is not None else None
                routes.append({"name": f"{vs.metadata.namespace}/{vs.metadata.name}#tcp{index}",
                               "hosts": hosts, "port": port,
                               "destinations": _destinations(route, port, vs.metadata.namespace, registry,
                                                             service_port=True)})
    return routes


def _names_of(hosts: Sequence[str], namespace: str, node: Node, registry: RegistryView) -> list[str]:
    """The names an app of ``node`` connects to for these VirtualService hosts (a registry service's
    short name only from its own namespace, as Kubernetes DNS resolves it)."""
    names: list[str] = []
    for host in hosts:
        resolved = resolve_host(host, namespace)
        service = registry.service(resolved.name, resolved.namespace or "") \
            if resolved.name is not None else None
        found = _service_names(service, node) if service is not None else [host.strip().lower()]
        names += [n for n in found if n not in names]
    return names


def _service_names(service: Service, node: Node) -> list[str]:
    short = [service.name] if service.namespace == node.namespace else []
    return [*short, f"{service.name}.{service.namespace}", f"{service.name}.{service.namespace}.svc",
            service.fqdn]


def _default_tcp_routes(node: Node, registry: RegistryView,
                        resources: Sequence[Resource]) -> list[dict[str, Any]]:
    """One route per registry Service port (its Kubernetes Service's ports, else the registry's one):
    Istio's outbound listener of a service port with no VirtualService goes to its own cluster."""
    routes: list[dict[str, Any]] = []
    for service in sorted(registry.services, key=lambda s: (s.namespace, s.name)):
        ports = _service_ports(resources, service)
        for port in ports:
            routes.append({"name": f"{service.fqdn}:{port}", "hosts": _service_names(service, node),
                           "port": port,
                           "destinations": [{"host": service.fqdn, "port": port, "weight": 100,
                                             "cluster": f"{service.name}.{service.namespace}|"}]})
    return routes


def _service_ports(resources: Sequence[Resource], service: Service) -> list[int]:
    for resource in resources:
        if isinstance(resource, KubeService) and resource.metadata.name == service.name \
                and resource.metadata.namespace == service.namespace and resource.spec.ports:
            return sorted({p.port for p in resource.spec.ports})
    return [service.port]


TCP_PORT_NAMES = ("tcp", "mongo", "mysql", "redis", "https", "tls")


def inbound_protocol(resources: Sequence[Resource], service: Service | None) -> str:
    """``"tcp"`` when the workload's Service port is opaque TCP by Istio's protocol selection (its
    ``appProtocol``, else its name: ``tcp``, ``tcp-*``...), else ``"http"``."""
    if service is None:
        return "http"
    for resource in resources:
        if not isinstance(resource, KubeService) or resource.metadata.name != service.name \
                or resource.metadata.namespace != service.namespace:
            continue
        for port in resource.spec.ports:
            if port.port != service.port:
                continue
            declared = (port.app_protocol or port.name or "").lower()
            if not declared:  # Istio sniffs: TLS from the pod's own server is carried as TCP
                target = port.target_port if isinstance(port.target_port, int) else port.port
                sniffed = tls_ports(resources, resource.metadata.namespace, resource.spec.selector)
                return "tcp" if target in sniffed else "http"
            prefix = declared.split("-", 1)[0]
            return "tcp" if prefix in TCP_PORT_NAMES else "http"
    return "http"
