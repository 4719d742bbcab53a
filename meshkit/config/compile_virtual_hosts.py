"""The snapshot's ``outbound.virtual_hosts``: which hosts a proxy serves, under which domains, and
which VirtualService's routes each one gets (Istio's precedence: `selection`). A sidecar gets one
per registry service, one per ServiceEntry host (`egress`) and one per other VirtualService host;
a gateway only the hosts bound to it by a Gateway selecting it (`gateways`, `httproutes`).

Called by `meshkit.config.compile.compile_snapshot`. It must not translate a route's fields
(`compile_routes` does) nor build clusters (`compile_clusters`). Pure data in, plain JSON out: no
I/O, no sockets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshkit.config.compile_routes import default_route, route_to, routes_of
from meshkit.config.egress import ExternalService, external_virtual_hosts
from meshkit.config.gateways import Gateway, bound_hosts
from meshkit.config.hosts import resolve_host
from meshkit.config.httproutes import ingress_virtual_services
from meshkit.config.registry import Node, RegistryView, Service
from meshkit.config.resources import Resource, VirtualService
from meshkit.config.selection import virtual_services_for


def sidecar_virtual_hosts(node: Node, registry: RegistryView, virtual_services: Sequence[VirtualService],
                          external: Sequence[ExternalService]) -> list[dict[str, Any]]:
    """A sidecar's virtual hosts: every registry service's, then the ServiceEntry hosts' (``external``),
    then the other hosts its VirtualServices name."""
    return [
        *(_virtual_host(svc, node, virtual_services)
          for svc in sorted(registry.services, key=lambda s: (s.namespace, s.name))),
        *external_virtual_hosts(external, virtual_services, lambda vs: routes_of(vs, node), route_to),
        *_other_virtual_hosts(node, registry, virtual_services, {s.host for s in external}),
    ]


def _domains(svc: Service, node: Node) -> list[str]:
    fqdn, port = svc.fqdn, svc.port
    short = [svc.name, f"{svc.name}:{port}"] if svc.namespace == node.namespace else []
    return [*short, f"{svc.name}.{svc.namespace}", f"{svc.name}.{svc.namespace}:{port}",
            f"{svc.name}.{svc.namespace}.svc", fqdn, f"{fqdn}:{port}"]


def _virtual_host(svc: Service, node: Node, virtual_services: Sequence[VirtualService]) -> dict[str, Any]:
    claiming = virtual_services_for(svc.fqdn, svc.namespace, virtual_services)
    routes = routes_of(claiming[0], node) if claiming else [default_route(svc)]
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


def gateway_virtual_hosts(node: Node, resources: Sequence[Resource],
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
        "routes": routes_of(vs, node, selected),
    }


def _gateway_bindings(node: Node, resources: Sequence[Resource]) -> list[tuple[str, VirtualService]]:
    """Istio Gateway + VirtualService bindings, and HTTPRoutes attached to a Gateway API Gateway
    (`httproutes`); the HTTPRoute wins a host both claim, as for sidecars."""
    chosen = dict(bound_hosts(node, resources))
    if node.labels.get("istio") == "ingressgateway":  # the mesh's one ingress serves Gateway API Gateways
        chosen.update(ingress_virtual_services(resources))
    return sorted(chosen.items())
