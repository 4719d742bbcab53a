"""ServiceEntry: external services in the mesh's registry, and what the compiler makes of them.

A ServiceEntry (networking.istio.io v1/v1beta1/v1alpha3) registers hosts outside the mesh
(``location: MESH_EXTERNAL``) or mesh services the registry does not list (``MESH_INTERNAL``):
``hosts``, ``ports`` (number, name, protocol, targetPort), ``resolution: NONE|STATIC|DNS|
DNS_ROUND_ROBIN`` and ``endpoints`` (address, ports by port name). For every host and HTTP port
the compiler gives a sidecar a virtual host (named ``host:port``, domains ``host`` and
``host:port``) and a cluster ``host|`` (plus ``host|subset`` for DestinationRule subsets), so
that VirtualService routes (timeouts, retries, faults) and DestinationRule policies apply to
the external host as to any service, and REGISTRY_ONLY lets it through.

Where an external endpoint is: a DNS name is looked up in the control plane's external host
map (``"host:port" -> "address:port"``, the local mesh's stand-ins), then, only with real
DNS on, left to the sidecar's resolver; otherwise the cluster has no endpoint (503 ``UH``),
so nothing ever tries a real host from a classroom without internet. An IP address is used
as written.

Pure data: no sockets, no files.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from meshkit.config.resources import (
    DestinationRule,
    IstioModel,
    Resource,
    TrafficPolicy,
    VirtualService,
)

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "HTTP_PROXY"})


class ServiceEntryPort(IstioModel):
    number: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: str | None = None
    target_port: int | None = Field(default=None, ge=1, le=65535)


class ServiceEntryEndpoint(IstioModel):
    """An endpoint of a ServiceEntry (a WorkloadEntry): the fields the local mesh uses; the others
    are named as unsupported."""

    unsupported_fields = frozenset({"network", "locality", "weight", "serviceAccount"})

    address: str = Field(min_length=1)
    ports: dict[str, int] | None = None
    labels: dict[str, str] | None = None


class ServiceEntrySpec(IstioModel):
    unsupported_fields = frozenset({"workloadSelector", "subjectAltNames"})

    hosts: list[str] = Field(min_length=1)
    addresses: list[str] | None = None  # accepted: the local mesh routes HTTP by Host, not by address
    ports: list[ServiceEntryPort] = Field(min_length=1)
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] = "NONE"
    endpoints: list[ServiceEntryEndpoint] | None = None
    export_to: list[str] | None = None


class ServiceEntry(Resource):
    group = "networking.istio.io"
    versions = ("v1", "v1beta1", "v1alpha3")

    kind: Literal["ServiceEntry"] = "ServiceEntry"
    spec: ServiceEntrySpec


@dataclass(frozen=True, slots=True)
class ExternalService:
    """One host of a ServiceEntry with the HTTP port the sidecar serves it on."""

    host: str
    port: ServiceEntryPort
    entry: ServiceEntry

    @property
    def cluster(self) -> str:
        return f"{self.host}|"


def external_services(resources: Sequence[Resource], namespace: str) -> list[ExternalService]:
    """The HTTP hosts of the ServiceEntries visible from ``namespace`` (exportTo ``*``/absent, ``.``
    for its own namespace); the first ServiceEntry by (namespace, name) that names a host wins."""
    chosen: dict[str, ExternalService] = {}
    entries = sorted((r for r in resources if isinstance(r, ServiceEntry)),
                     key=lambda r: (r.metadata.namespace, r.metadata.name))
    for entry in entries:
        export = entry.spec.export_to
        if export and "*" not in export and not (
                ("." in export and entry.metadata.namespace == namespace) or namespace in export):
            continue
        ports = [p for p in entry.spec.ports if (p.protocol or "").upper() in HTTP_PROTOCOLS]
        if not ports:
            continue  # TLS/HTTPS/TCP ports: the app's own TLS goes through the capture passthrough
        for host in entry.spec.hosts:
            name = host.strip().lower()
            if "*" in name:
                continue  # a wildcard has no address to resolve: left to the passthrough
            chosen.setdefault(name, ExternalService(name, ports[0], entry))
    return [chosen[host] for host in sorted(chosen)]


Credentials = Callable[[str], tuple[str, str, str | None] | None]  # name -> (cert, key, ca.crt)
Files = Callable[[str], str | None]  # a path in the proxy's container -> its text (config.user_volumes)


def origination_tls(policy: TrafficPolicy | None, host: str,
                    credentials: Credentials | None = None, files: Files | None = None) -> dict[str, Any]:
    """A cluster's ``tls`` for a DestinationRule's mode outside the mesh: ``SIMPLE`` originates TLS
    with the DestinationRule's ``sni`` (else the host), checking ``subjectAltNames`` (else that name);
    ``MUTUAL`` also carries the client certificate of its ``credentialName`` (``credentials``: the
    Secret as the client proxy sees it; null PEMs when there is none, see proxy.tls.originate), or of
    its ``clientCertificate``/``privateKey`` files (``files``: the proxy's user volumes); a
    ``caCertificates`` file checks the server instead of the stand-ins' CA."""
    tls = policy.tls if policy is not None else None
    if tls is None or tls.mode not in ("SIMPLE", "MUTUAL"):
        return {"mode": tls.mode if tls is not None else "DISABLE", "server_identities": []}
    found: dict[str, Any] = {"mode": tls.mode, "server_identities": [], "sni": tls.sni or host,
                             "subject_alt_names": list(tls.subject_alt_names or []),
                             "insecure_skip_verify": bool(tls.insecure_skip_verify)}
    if tls.mode == "MUTUAL" and tls.credential_name:
        name = tls.credential_name
        pair = credentials(name) if credentials is not None else None
        found.update({"credential": name, "client_cert_pem": pair[0] if pair else None,
                      "client_key_pem": pair[1] if pair else None, "ca_pem": pair[2] if pair else None})
    elif tls.mode == "MUTUAL":  # the files of the pod's user volumes (null when not mounted: 503, as Envoy)
        read = files or (lambda _path: None)
        found.update({"credential": tls.client_certificate or "",
                      "client_cert_pem": read(tls.client_certificate or ""),
                      "client_key_pem": read(tls.private_key or ""),
                      "ca_pem": read(tls.ca_certificates) if tls.ca_certificates else None})
    elif tls.ca_certificates:  # SIMPLE with a CA file
        found["ca_pem"] = (files or (lambda _path: None))(tls.ca_certificates)
    return found


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _where(name: str, port: int, hosts: Mapping[str, str], real_dns: bool) -> tuple[str, int] | None:
    """Where ``name:port`` is: an IP as written, the stand-in map, real DNS (the name) or nowhere."""
    if _is_ip(name):
        return name, port
    target = hosts.get(f"{name}:{port}")
    if target is not None:
        address, _, target_port = target.rpartition(":")
        return address, int(target_port)
    return (name, port) if real_dns else None


def _endpoints(service: ExternalService, hosts: Mapping[str, str], real_dns: bool) -> list[dict[str, Any]]:
    spec, port = service.entry.spec, service.port
    wanted = port.target_port or port.number
    found: list[tuple[str, int, dict[str, str]]] = []
    if spec.endpoints:
        for endpoint in spec.endpoints:
            number = (endpoint.ports or {}).get(port.name or "", wanted)
            where = _where(endpoint.address, number, hosts, real_dns)
            if where is not None:
                found.append((*where, dict(endpoint.labels or {})))
    elif spec.resolution != "STATIC":
        where = _where(service.host, wanted, hosts, real_dns)
        if where is not None:
            found.append((*where, {}))
    return [
        {"address": address, "port": number, "instance": service.host, "workload": service.host,
         "version": labels.get("version"), "labels": dict(sorted(labels.items())), "identity": None,
         "has_sidecar": False, "healthy": True}
        for address, number, labels in found
    ]


def external_virtual_hosts(
    services: Sequence[ExternalService], virtual_services: Sequence[VirtualService],
    compile_routes: Callable[[VirtualService], list[dict[str, Any]]],
    default_route: Callable[[str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """A virtual host per external host: the first VirtualService naming it routes it, else the default."""
    hosts = []
    for service in services:
        claiming = [vs for vs in virtual_services
                    if service.host in {h.strip().lower() for h in vs.spec.hosts}]
        routes = compile_routes(claiming[0]) if claiming else [default_route(service.cluster)]
        for route in routes:
            for destination in route["route"]:
                destination["cluster"] = _external_cluster(destination["cluster"], services)
            if route.get("mirror"):
                route["mirror"]["cluster"] = _external_cluster(route["mirror"]["cluster"], services)
        number = service.port.number
        domains = [service.host, f"{service.host}:{number}"]
        hosts.append({"name": f"{service.host}:{number}", "service": service.host, "domains": domains,
                      "port": number, "routes": routes})
    return hosts


def _external_cluster(cluster: str, services: Sequence[ExternalService]) -> str:
    """The compiler names a destination ``httpbin.org`` as ``httpbin|`` (service httpbin of namespace
    org, its reading of a two-label host); an external host's destination is its own cluster."""
    for service in services:
        name, _, rest = service.host.partition(".")
        _, _, subset = cluster.partition("|")
        if cluster.startswith(f"{service.host}|") or (cluster == f"{name}|{subset}" and "." not in rest):
            return f"{service.host}|{subset}"
    return cluster


def external_clusters(
    services: Sequence[ExternalService], destination_rules: Sequence[DestinationRule],
    hosts: Mapping[str, str], real_dns: bool, *,
    cluster: Callable[[str, int, str, TrafficPolicy | None, list[dict[str, Any]]], dict[str, Any]],
    merge: Callable[[TrafficPolicy | None, TrafficPolicy | None], TrafficPolicy | None],
) -> dict[str, Any]:
    """``host|`` and ``host|subset`` clusters of the external hosts, with DestinationRule policies."""
    clusters: dict[str, Any] = {}
    for service in services:
        endpoints = _endpoints(service, hosts, real_dns)
        rules = [r for r in destination_rules if r.spec.host.strip().lower() == service.host]
        rule = rules[0] if rules else None
        top = rule.spec.traffic_policy if rule else None
        port = service.port.number
        clusters[service.cluster] = cluster(service.host, port, "", top, endpoints)
        for subset in (rule.spec.subsets or []) if rule else []:
            selected = [e for e in endpoints
                        if all(e["labels"].get(k) == v for k, v in (subset.labels or {}).items())]
            clusters[f"{service.host}|{subset.name}"] = cluster(
                service.host, port, subset.name, merge(top, subset.traffic_policy), selected)
        for other in service.entry.spec.ports:  # a route naming another port (an egress gateway's to 443)
            if other.number != port:
                clusters[port_cluster(service.host, other.number)] = cluster(
                    service.host, other.number, "", top,
                    _endpoints(ExternalService(service.host, other, service.entry), hosts, real_dns))
    return clusters


def port_cluster(host: str, port: int, subset: str = "") -> str:
    """Envoy's name of an external host's cluster for one of its other ServiceEntry ports (a route's
    ``destination.port``: ``outbound|443||edition.cnn.com``); ``host|`` stays its HTTP port's."""
    return f"outbound|{port}|{subset}|{host}"


def fold_port_clusters(virtual_hosts: Sequence[dict[str, Any]], clusters: Mapping[str, Any]) -> None:
    """Routes naming a port that has no cluster of its own (the host's or Service's own port) go to the
    host's cluster: ``host|subset``, or a registry service's ``name.namespace|subset``."""
    for vhost in virtual_hosts:
        for route in vhost["routes"]:
            targets = [*route["route"], *([route["mirror"]] if route.get("mirror") else [])]
            for target in targets:
                name = target["cluster"]
                if name.startswith("outbound|") and name not in clusters:
                    _, _, subset, host = name.split("|", 3)
                    service, _, rest = host.partition(".")
                    namespace, _, suffix = rest.partition(".")
                    registry = suffix == "svc.cluster.local"
                    target["cluster"] = f"{service}.{namespace}|{subset}" if registry else f"{host}|{subset}"
