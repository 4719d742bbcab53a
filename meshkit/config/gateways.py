"""Istio's ``Gateway`` (networking.istio.io v1/v1beta1/v1alpha3) and which hosts a gateway proxy serves.

A Gateway selects gateway proxies by their labels (``istio: ingressgateway``) and lists
servers (port, protocol, hosts). A VirtualService binds to it by naming it in ``gateways``
(``name`` in the VirtualService's namespace, or ``namespace/name``); ``mesh`` keeps meaning
the sidecars. A gateway proxy serves only the hosts that a bound VirtualService and one of
the Gateway's servers both accept; any other Host gets Envoy's 404 ``NR``, as in Istio.

The local mesh has one ingress listener, so every server of a selected Gateway is served on
it whatever its ``port.number`` (Istio's ingress Service maps 80 to the pods' 8080 the same
way). Data only: no sockets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

from pydantic import Field

from meshkit.config.registry import Node
from meshkit.config.resources import IstioModel, Resource, VirtualService

MESH = "mesh"


class GatewayPort(IstioModel):
    unsupported_values = {"protocol": frozenset({"HTTPS", "HTTP2", "GRPC", "TCP", "TLS", "MONGO"})}

    number: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Literal["HTTP"] = "HTTP"
    target_port: int | None = None


class GatewayServer(IstioModel):
    unsupported_fields = frozenset({"tls", "bind", "defaultEndpoint"})

    port: GatewayPort
    hosts: list[str] = Field(min_length=1)
    name: str | None = None


class GatewaySpec(IstioModel):
    selector: dict[str, str] | None = None
    servers: list[GatewayServer] = Field(min_length=1)


class Gateway(Resource):
    group = "networking.istio.io"
    versions = ("v1", "v1beta1", "v1alpha3")

    kind: Literal["Gateway"] = "Gateway"
    spec: GatewaySpec


def gateway_key(reference: str, namespace: str) -> tuple[str, str]:
    """``bookinfo-gateway`` (in ``namespace``) or ``istio-system/gw`` -> (namespace, name)."""
    ns, slash, name = reference.partition("/")
    return (ns, name) if slash else (namespace, reference)


def _selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def _host_matches(pattern: str, host: str) -> bool:
    """Does the (possibly wildcard) ``pattern`` cover ``host``: ``*``, ``*.example.com``, exact."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) or host == pattern
    return pattern == host


def intersect_hosts(server_host: str, vs_host: str) -> str | None:
    """The host both accept: the narrower of the two (Istio's gateway/VirtualService host matching)."""
    if _host_matches(server_host, vs_host):
        return vs_host
    if _host_matches(vs_host, server_host):
        return server_host
    return None


def _server_host(entry: str, gateway_namespace: str, vs_namespace: str) -> str | None:
    """A server host as seen by a VirtualService of ``vs_namespace``: ``ns/host`` restricts it to
    VirtualServices of ``ns`` (``.`` the Gateway's own namespace, ``*`` any)."""
    ns, slash, host = entry.partition("/")
    if not slash:
        return entry
    if ns in ("*", vs_namespace) or (ns == "." and gateway_namespace == vs_namespace):
        return host
    return None


def gateways_for(node: Node, resources: Sequence[Resource]) -> dict[tuple[str, str], Gateway]:
    """The Gateways whose selector selects this gateway proxy, by (namespace, name)."""
    return {(g.metadata.namespace, g.metadata.name): g for g in resources
            if isinstance(g, Gateway) and _selects(g.spec.selector, node.labels)}


def bound_hosts(node: Node, resources: Sequence[Resource]) -> list[tuple[str, VirtualService]]:
    """(host, VirtualService) for every host the gateway proxy ``node`` serves, sorted by host.

    The first VirtualService by (namespace, name) that claims a host wins, as for sidecars.
    """
    selected = gateways_for(node, resources)
    chosen: dict[str, VirtualService] = {}
    services = sorted((r for r in resources if isinstance(r, VirtualService)), key=lambda v: v.key)
    for vs in services:
        for host in _hosts_of(vs, selected):
            chosen.setdefault(host.lower(), vs)
    return sorted(chosen.items())


def _hosts_of(vs: VirtualService, selected: Mapping[tuple[str, str], Gateway]) -> Iterator[str]:
    namespace = vs.metadata.namespace
    for reference in vs.spec.gateways or []:
        if reference == MESH:
            continue
        gateway = selected.get(gateway_key(reference, namespace))
        if gateway is None:
            continue
        for server in gateway.spec.servers:
            for entry in server.hosts:
                server_host = _server_host(entry, gateway.metadata.namespace, namespace)
                if server_host is None:
                    continue
                for vs_host in vs.spec.hosts:
                    host = intersect_hosts(server_host.lower(), vs_host.strip().lower())
                    if host is not None:
                        yield host


def missing_gateways(vs: VirtualService, resources: Sequence[Resource]) -> list[tuple[int, str]]:
    """(index, reference) of every entry of ``spec.gateways`` that names no Gateway in ``resources``."""
    known = {(g.metadata.namespace, g.metadata.name) for g in resources if isinstance(g, Gateway)}
    return [(index, reference) for index, reference in enumerate(vs.spec.gateways or [])
            if reference != MESH and gateway_key(reference, vs.metadata.namespace) not in known]
