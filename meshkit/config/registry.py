"""The service registry as plain data: what `compile` and `analyze` need to know about
services, their endpoints and the proxy a snapshot is built for.

The control plane owns the live registry (`meshkit.control.registry`); it hands
these immutable values to the pure functions in this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One workload instance reachable through its inbound sidecar port."""

    instance: str  # "reviews-v1-0"
    workload: str  # "reviews-v1"
    service: str  # "reviews"
    namespace: str
    address: str  # "127.0.0.1"
    port: int  # the inbound sidecar port (or the app port when has_sidecar is False)
    labels: dict[str, str] = field(default_factory=dict)
    service_account: str = "default"
    has_sidecar: bool = True
    healthy: bool = True

    @property
    def identity(self) -> str:
        return f"spiffe://cluster.local/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def version(self) -> str | None:
        return self.labels.get("version")


@dataclass(frozen=True, slots=True)
class Service:
    """A service name with its port (9080 for Bookinfo, 8000 for httpbin)."""

    name: str
    namespace: str
    port: int

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True, slots=True)
class Node:
    """The proxy a snapshot is compiled for (see docs/snapshot.md, ``node``)."""

    instance: str
    namespace: str = "default"
    workload: str | None = None
    service: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    service_account: str = "default"
    kind: str = "sidecar"  # "sidecar" | "gateway"
    app_port: int | None = None  # the local app behind the inbound listener

    @property
    def id(self) -> str:
        return f"{self.instance}.{self.namespace}"

    @property
    def identity(self) -> str:
        return f"spiffe://cluster.local/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, slots=True)
class RegistryView:
    """An immutable picture of the registry at one moment."""

    services: tuple[Service, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    root_pem: str | None = None
    # hosts outside the mesh: "host:port" -> "address:port" (the local mesh's stand-ins), and whether
    # other names may be resolved by real DNS (snapshot ``egress``)
    external_hosts: tuple[tuple[str, str], ...] = ()
    real_dns: bool = False
    external_ca: str | None = None  # the CA (PEM) of the stand-ins' HTTPS, trusted for TLS origination

    def service(self, name: str, namespace: str = "default") -> Service | None:
        for svc in self.services:
            if svc.name == name and svc.namespace == namespace:
                return svc
        return None

    def endpoints_of(self, service: str, namespace: str = "default") -> list[Endpoint]:
        return [e for e in self.endpoints if e.service == service and e.namespace == namespace]
