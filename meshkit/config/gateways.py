"""Istio's ``Gateway`` (networking.istio.io v1/v1beta1/v1alpha3) and which hosts a gateway proxy serves.

A Gateway selects gateway proxies by their labels (``istio: ingressgateway``) and lists
servers (port, protocol, hosts). A VirtualService binds to it by naming it in ``gateways``
(``name`` in the VirtualService's namespace, or ``namespace/name``); ``mesh`` keeps meaning
the sidecars. A gateway proxy serves only the hosts that a bound VirtualService and one of
the Gateway's servers both accept; any other Host gets Envoy's 404 ``NR``, as in Istio.

The local mesh's ingress has one HTTP listener and one HTTPS listener: every HTTP server of a
selected Gateway is served on the first and every HTTPS server on the second, whatever its
``port.number`` (Istio's ingress Service maps 80 and 443 to the pods' 8080 and 8443 the same
way). An HTTPS server (``tls.mode: SIMPLE``) presents the certificate of the TLS Secret its
``credentialName`` names, found in the gateway workload's namespace (``istio-system``) or the
Gateway's own (`tls_servers`), chosen by the client's SNI among the server's hosts. Data only: no
sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

from pydantic import Field, model_validator

from meshkit.config.registry import Node
from meshkit.config.resources import HTTPMatchRequest, IstioModel, Resource, VirtualService

MESH = "mesh"


class GatewayPort(IstioModel):
    unsupported_values = {"protocol": frozenset({"HTTP2", "GRPC", "MONGO"})}

    number: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Literal["HTTP", "HTTPS", "TLS", "TCP"] = "HTTP"
    target_port: int | None = None


class ServerTLSSettings(IstioModel):
    """An HTTPS server's TLS: ``SIMPLE`` with the certificate of the Secret ``credentialName``;
    ``ISTIO_MUTUAL`` with the gateway's own workload certificate, requiring the mesh client's (a sidecar
    whose DestinationRule says ``ISTIO_MUTUAL``: the hop to an egress gateway); a TLS server's
    ``PASSTHROUGH`` (the client's TLS carried unopened, routed by SNI: ``tls_routes``)."""

    unsupported_fields = frozenset({
        "serverCertificate", "privateKey", "caCertificates", "credentialNames", "subjectAltNames",
        "verifyCertificateSpki", "verifyCertificateHash", "minProtocolVersion", "maxProtocolVersion",
        "cipherSuites", "caCrl", "tlsCertificates"})
    unsupported_values = {
        "mode": frozenset({"MUTUAL", "AUTO_PASSTHROUGH", "OPTIONAL_MUTUAL"})}

    mode: Literal["SIMPLE", "PASSTHROUGH", "ISTIO_MUTUAL"] = "SIMPLE"
    credential_name: str | None = None
    https_redirect: bool | None = None

    @model_validator(mode="after")
    def _istio_mutual_has_no_credential(self) -> ServerTLSSettings:
        if self.mode == "ISTIO_MUTUAL" and self.credential_name:  # Istio's validation, word for word
            raise ValueError("ISTIO_MUTUAL TLS cannot have associated credentialName (the gateway presents "
                             "its own workload certificate; use mode SIMPLE or MUTUAL for a Secret)")
        return self


class GatewayServer(IstioModel):
    unsupported_fields = frozenset({"bind", "defaultEndpoint"})

    port: GatewayPort
    hosts: list[str] = Field(min_length=1)
    name: str | None = None
    tls: ServerTLSSettings | None = None

    @model_validator(mode="after")
    def _tls_is_passed_through(self) -> GatewayServer:
        if self.port.protocol == "TLS" and (self.tls is None or self.tls.mode != "PASSTHROUGH"):
            raise ValueError("a TLS server needs tls.mode PASSTHROUGH in meshkit (a TLS server that "
                             "terminates TLS routes TCP, which meshkit does not model)")
        if self.port.protocol == "HTTP" and self.tls is not None and self.tls.mode == "PASSTHROUGH":
            raise ValueError("tls.mode PASSTHROUGH needs protocol HTTPS or TLS")
        if self.port.protocol != "HTTPS" and self.tls is not None and self.tls.mode == "ISTIO_MUTUAL":
            raise ValueError("tls.mode ISTIO_MUTUAL needs protocol HTTPS in meshkit (mutual TLS from "
                             "the mesh's sidecars, then HTTP routes)")
        return self


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
        if (vs.spec.tls or vs.spec.tcp) and not vs.spec.http:
            continue  # only SNI or TCP routes (tls_routes): no HTTP host
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
            if is_passthrough(server) or server.port.protocol == "TCP":
                continue  # not HTTP: SNI routes or TCP routes (tls_routes), not HTTP virtual hosts
            for entry in server.hosts:
                server_host = _server_host(entry, gateway.metadata.namespace, namespace)
                if server_host is None:
                    continue
                for vs_host in vs.spec.hosts:
                    host = intersect_hosts(server_host.lower(), vs_host.strip().lower())
                    if host is not None:
                        yield host


def match_scope(m: HTTPMatchRequest, vs: VirtualService, node: Node,
                selected: Mapping[tuple[str, str], Gateway]) -> tuple[bool, int | None]:
    """Is the VirtualService ``vs``'s match ``m`` for the proxy ``node`` (``selected``: the Gateways that
    select it), and the port left for the proxy to match per request.

    A match's ``gateways`` replaces the VirtualService's for that match (Istio); ``mesh`` names the
    sidecars. A sidecar matches ``port`` per request (the Host's port). A gateway matches it here, against
    the ports of the named Gateways' servers: the local gateway proxy serves all of them on one listener.
    """
    if node.kind != "gateway":  # the VirtualService is for the mesh (compile's _applies_to)
        return m.gateways is None or MESH in m.gateways, m.port
    if m.gateways is None and m.port is None:  # bound to this gateway by its VirtualService (or HTTPRoute)
        return True, None
    references = m.gateways or vs.spec.gateways or []
    gateways = [gateway for reference in references if reference != MESH
                and (gateway := selected.get(gateway_key(reference, vs.metadata.namespace))) is not None]
    if m.port is not None:
        gateways = [g for g in gateways if any(s.port.number == m.port for s in g.spec.servers)]
    return bool(gateways), None


def missing_gateways(vs: VirtualService, resources: Sequence[Resource]) -> list[tuple[int, str]]:
    """(index, reference) of every entry of ``spec.gateways`` that names no Gateway in ``resources``."""
    known = {(g.metadata.namespace, g.metadata.name) for g in resources if isinstance(g, Gateway)}
    return [(index, reference) for index, reference in enumerate(vs.spec.gateways or [])
            if reference != MESH and gateway_key(reference, vs.metadata.namespace) not in known]


# The namespace of the mesh's gateway proxies (the ingress gateway's workload).
GATEWAY_WORKLOAD_NAMESPACE = "istio-system"
# The ports of Istio's egress gateway Service (http2 80, https 443): the local one listens once for both
EGRESS_GATEWAY_PORTS = {("istio-egressgateway", GATEWAY_WORKLOAD_NAMESPACE): frozenset({80, 443})}


def credential_namespaces(gateway: Gateway,
                          workload_namespace: str = GATEWAY_WORKLOAD_NAMESPACE) -> list[str]:
    """Where a server's ``credentialName`` is looked up: the gateway workload's namespace, then the
    Gateway's own."""
    return list(dict.fromkeys((workload_namespace, gateway.metadata.namespace)))


def is_passthrough(server: GatewayServer) -> bool:
    """A server whose TLS the gateway carries unopened (``tls.mode: PASSTHROUGH``, HTTPS or TLS)."""
    return server.tls is not None and server.tls.mode == "PASSTHROUGH"


def is_istio_mutual(server: GatewayServer) -> bool:
    """A server that takes the mesh's mutual TLS (``tls.mode: ISTIO_MUTUAL``): no Secret of its own."""
    return server.tls is not None and server.tls.mode == "ISTIO_MUTUAL"


def https_servers(gateway: Gateway) -> Iterator[tuple[int, GatewayServer]]:
    """(index, server) of the Gateway's HTTPS servers that terminate TLS with a Secret's certificate."""
    for index, server in enumerate(gateway.spec.servers):
        if server.port.protocol == "HTTPS" and not is_passthrough(server) and not is_istio_mutual(server):
            yield index, server


def mutual_servers(node: Node, resources: Sequence[Resource]) -> dict[str, object]:
    """The ISTIO_MUTUAL servers of the Gateways selecting ``node`` (snapshot ``gateway_tls.istio_mutual``:
    the hosts a sidecar's mutual TLS may name in its SNI, the gateway answering with its own workload
    certificate) and ``plaintext``: False when those are the only HTTP servers the proxy has (as Envoy's
    listener whose one filter chain needs TLS, a plaintext caller is refused)."""
    found: list[dict[str, object]] = []
    plain = False
    for (namespace, name), gateway in sorted(gateways_for(node, resources).items()):
        for index, server in enumerate(gateway.spec.servers):
            if server.port.protocol == "HTTP":
                plain = True
            if not is_istio_mutual(server):
                continue
            hosts = sorted({entry.partition("/")[2] if "/" in entry else entry for entry in server.hosts})
            found.append({"gateway": f"{namespace}/{name}", "server": index, "port": server.port.number,
                          "hosts": [h.lower() for h in hosts]})
    return {"servers": found, "plaintext": plain or not found}


def tcp_servers(gateway: Gateway) -> Iterator[GatewayServer]:
    """The Gateway's TCP servers: opaque TCP, routed by the port (`tls_routes`)."""
    return (server for server in gateway.spec.servers if server.port.protocol == "TCP")


def passthrough_servers(gateway: Gateway) -> Iterator[GatewayServer]:
    """The Gateway's PASSTHROUGH servers: their traffic is routed by SNI (`tls_routes`)."""
    return (server for server in gateway.spec.servers if is_passthrough(server))


def tls_servers(node: Node, resources: Sequence[Resource],
                find_secret: Callable[[str, Sequence[str]], tuple[str, str] | None],
                ) -> list[dict[str, object]]:
    """The HTTPS servers the gateway proxy ``node`` serves (snapshot ``gateway_tls.servers``), each with
    the certificate pair of its ``credentialName`` (``find_secret(name, namespaces)``); a server whose
    Secret is missing is left out (its hosts get no TLS, as on Istio; the analyzer reports it)."""
    servers: list[dict[str, object]] = []
    for (namespace, name), gateway in sorted(gateways_for(node, resources).items()):
        for index, server in https_servers(gateway):
            credential = server.tls.credential_name if server.tls is not None else None
            if not credential:
                continue
            pair = find_secret(credential, credential_namespaces(gateway, node.namespace))
            if pair is None:
                continue
            hosts = sorted({entry.partition("/")[2] if "/" in entry else entry for entry in server.hosts})
            servers.append({"gateway": f"{namespace}/{name}", "server": index, "port": server.port.number,
                            "hosts": [h.lower() for h in hosts], "credential": credential,
                            "cert_pem": pair[0], "key_pem": pair[1]})
    return servers
