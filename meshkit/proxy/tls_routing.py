"""The snapshot's ``tls`` section, checked once per snapshot: where TLS the proxy does not open goes.

``TlsRouting.from_snapshot`` reads ``tls.routes`` (VirtualService ``tls`` routes for this proxy,
first match wins: SNI exact or ``*.example.com``, port or any) and ``tls.hosts`` (ServiceEntry
TLS ports: what REGISTRY_ONLY lets through with no route), plus the ``egress`` map that resolves
external hosts (``edition.cnn.com:443`` -> its stand-in). ``choose`` picks a route's destination
by weight. The ``tcp`` routes (opaque TCP) take the same shape (``tcp_routes``): a gateway's by port
alone (``hosts`` null), a sidecar's by the destination name and port of the app's tunnel
(``tcp_route``).
docs/snapshot.md describes the sections; ``tunnel`` carries the bytes.

It must not do: sockets, or anything but the standard library (the proxy is a leaf).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from meshkit.proxy.egress import Egress, EgressError, split_hostport
from meshkit.proxy.sni import name_matches


@dataclass(frozen=True, slots=True)
class TlsDestination:
    host: str  # FQDN of a registry service, or the external host
    port: int
    cluster: str | None  # a registry service's cluster; None: resolve host:port with the egress map
    weight: int

    @property
    def stats_name(self) -> str:
        """Envoy's cluster name, as the access log and metrics show it."""
        subset = self.cluster.partition("|")[2] if self.cluster else ""
        return f"outbound|{self.port}|{subset}|{self.host}"


@dataclass(frozen=True, slots=True)
class TlsRoute:
    name: str
    sni_hosts: tuple[str, ...]
    port: int | None
    destinations: tuple[TlsDestination, ...]
    hosts: tuple[str, ...] | None = None  # a sidecar's tcp route: the destination names it takes

    def matches(self, sni: str, port: int) -> bool:
        return (self.port is None or self.port == port) and any(name_matches(p, sni) for p in self.sni_hosts)

    def takes(self, host: str, port: int) -> bool:
        """A sidecar's tcp route: the tunnel's destination ``host:port`` is one of its names and port."""
        return (self.port is None or self.port == port) and self.hosts is not None \
            and any(name_matches(p, host) for p in self.hosts)

    def choose(self, rng: random.Random) -> TlsDestination:
        total = sum(d.weight for d in self.destinations)
        if total <= 0:
            return self.destinations[0]
        point = rng.uniform(0, total)
        for destination in self.destinations:
            point -= destination.weight
            if point < 0:
                return destination
        return self.destinations[-1]


class TlsRouting:
    """The checked ``tls`` and ``tcp`` sections (see the module docstring)."""

    __slots__ = ("egress", "hosts", "routes", "tcp_routes")

    def __init__(self, routes: tuple[TlsRoute, ...] = (), hosts: tuple[tuple[str, int], ...] = (),
                 egress: Egress | None = None, tcp_routes: tuple[TlsRoute, ...] = ()) -> None:
        self.routes = routes
        self.hosts = hosts
        self.egress = egress or Egress()
        self.tcp_routes = tcp_routes  # opaque TCP routes (sni_hosts "*"; a sidecar's with hosts)

    @classmethod
    def from_snapshot(cls, section: Any, mesh: Any, egress: Any, tcp: Any = None) -> TlsRouting:
        """ValueError naming the key for anything malformed."""
        try:
            resolver = Egress.from_snapshot(mesh, egress)
        except EgressError:
            resolver = Egress()  # reported by the snapshot's own egress check
        tcp_routes = _tcp_routes(tcp)
        if section is None:
            return cls(egress=resolver, tcp_routes=tcp_routes)
        if not isinstance(section, dict):
            raise ValueError(f"tls: expected an object, got {type(section).__name__}")
        routes = tuple(_route(raw, f"tls.routes[{i}]") for i, raw in enumerate(section.get("routes") or []))
        hosts = []
        for i, raw in enumerate(section.get("hosts") or []):
            if not isinstance(raw, str):
                raise ValueError(f"tls.hosts[{i}]: expected \"host:port\", got {raw!r}")
            try:
                hosts.append(split_hostport(raw, 443, f"tls.hosts[{i}]"))
            except EgressError as exc:
                raise ValueError(str(exc)) from None
        return cls(routes, tuple(hosts), resolver, tcp_routes)

    def route(self, sni: str, port: int) -> TlsRoute | None:
        return next((r for r in self.routes if r.matches(sni, port)), None)

    def tcp_route(self, host: str, port: int) -> TlsRoute | None:
        """A sidecar's first tcp route taking ``host:port`` (the app's tunnel), else None."""
        lowered = host.lower()
        return next((r for r in self.tcp_routes if r.takes(lowered, port)), None)

    def service_cluster(self, host: str) -> str | None:
        """The whole-service cluster (``name.ns|``) of the registry service an app calls ``host``, on
        any port (the names of its tcp routes), else None: where the name resolves on the local mesh."""
        lowered = host.lower()
        for route in self.tcp_routes:
            if route.hosts is None or lowered not in route.hosts:
                continue
            for destination in route.destinations:
                if destination.cluster is not None:
                    return destination.cluster.partition("|")[0] + "|"
        return None

    def registered(self, host: str, port: int) -> bool:
        """Whether a ServiceEntry lists ``host:port`` with a TLS/HTTPS/TCP port."""
        return any(p == port and name_matches(pattern, host) for pattern, p in self.hosts)


def _tcp_routes(section: Any) -> tuple[TlsRoute, ...]:
    if section is None:
        return ()
    if not isinstance(section, dict):
        raise ValueError(f"tcp: expected an object, got {type(section).__name__}")
    raw_routes = section.get("routes") or []
    if not isinstance(raw_routes, list):
        raise ValueError(f"tcp.routes: expected a list, got {raw_routes!r}")
    return tuple(_tcp_route(raw, f"tcp.routes[{i}]") for i, raw in enumerate(raw_routes))


def _tcp_route(raw: Any, where: str) -> TlsRoute:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {raw!r}")
    route = _route({**raw, "sni_hosts": ["*"]}, where)
    hosts = raw.get("hosts")
    if hosts is None:
        return route
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise ValueError(f"{where}.hosts: expected a list of host names or null, got {hosts!r}")
    names = tuple(h.lower() for h in hosts)
    return TlsRoute(route.name, route.sni_hosts, route.port, route.destinations, names)


def _route(raw: Any, where: str) -> TlsRoute:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {raw!r}")
    sni = raw.get("sni_hosts")
    if not isinstance(sni, list) or not sni or not all(isinstance(h, str) and h for h in sni):
        raise ValueError(f"{where}.sni_hosts: expected a non-empty list of host names, got {sni!r}")
    port = raw.get("port")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError(f"{where}.port: expected a port number or null, got {port!r}")
    destinations = raw.get("destinations")
    if not isinstance(destinations, list) or not destinations:
        raise ValueError(f"{where}.destinations: expected a non-empty list, got {destinations!r}")
    return TlsRoute(str(raw.get("name") or where), tuple(h.lower() for h in sni), port,
                    tuple(_destination(d, f"{where}.destinations[{i}]") for i, d in enumerate(destinations)))


def _destination(raw: Any, where: str) -> TlsDestination:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {raw!r}")
    host, port, cluster, weight = raw.get("host"), raw.get("port"), raw.get("cluster"), raw.get("weight", 100)
    if not isinstance(host, str) or not host:
        raise ValueError(f"{where}.host: expected a host name, got {host!r}")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{where}.port: expected a port number, got {port!r}")
    if cluster is not None and not isinstance(cluster, str):
        raise ValueError(f"{where}.cluster: expected a cluster name or null, got {cluster!r}")
    if not isinstance(weight, int) or weight < 0:
        raise ValueError(f"{where}.weight: expected a non-negative integer, got {weight!r}")
    return TlsDestination(host.lower(), port, cluster, weight)
