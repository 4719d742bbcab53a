"""Outbound calls to hosts the mesh does not know: Istio's ``PassthroughCluster`` and ``BlackHoleCluster``.

An app calls through its sidecar as ``HTTP_PROXY``; when the request's ``Host`` matches no
virtual host of the snapshot, Istio's ``meshConfig.outboundTrafficPolicy.mode`` decides
(snapshot ``mesh.outbound_traffic_policy``):

- ``ALLOW_ANY`` (Istio's default): the request is forwarded as is to the host it names,
  accounted to the cluster ``PassthroughCluster`` (metrics ``destination_service_name``);
- ``REGISTRY_ONLY``: it is refused with 502, accounted to ``BlackHoleCluster`` (Envoy's
  black-hole cluster has no endpoint, so the caller sees 502 and no upstream is contacted).

Where a host name goes is ``Egress.resolve``: the snapshot's ``egress.hosts`` map
(``"httpbin.org:80" -> "127.0.0.1:8101"``, how the local mesh sends Istio's external hosts to
its stand-ins, never /etc/hosts), then, only with ``egress.real_dns``, the name itself (the
system resolver). Without real DNS a name outside the map is never connected to (503 with
Envoy's DNS-failure flag ``DF``, "no stand-in"), so a classroom without internet never tries
the real host; an IP literal goes where it says.

It must not do: routing for known hosts (that is ``routing``), TLS origination (``upstream``),
or anything but the standard library (the proxy is a leaf).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable
from typing import Any

from meshkit.proxy.balancer import Endpoint
from meshkit.proxy.http import Handler, Request, Response, answered

ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"
POLICIES = (ALLOW_ANY, REGISTRY_ONLY)
PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
EGRESS_CLUSTERS = frozenset({PASSTHROUGH_CLUSTER, BLACKHOLE_CLUSTER})
_MAX_ENDPOINTS = 256  # passthrough endpoints kept per snapshot (metrics keys hold them)


class EgressError(ValueError):
    """A bad ``egress`` / ``mesh.outbound_traffic_policy`` section (message starts with the key path)."""


def split_hostport(value: str, default_port: int, where: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``, or ``"host"`` with ``default_port``) -> (host, port)."""
    host, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        host, port_text = value[1:end], value[end + 2:] if end > 0 else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    if not host:
        raise EgressError(f"{where}: no host in {value!r}")
    if not port_text:
        return host.lower(), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise EgressError(f"{where}: bad port in {value!r}")
    return host.lower(), int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Egress:
    """The snapshot's egress settings, checked once; ``unmatched`` answers a request no virtual host took."""

    __slots__ = ("_endpoints", "hosts", "policy", "real_dns")

    def __init__(self, policy: str = ALLOW_ANY, hosts: dict[tuple[str, int], tuple[str, int]] | None = None,
                 real_dns: bool = False) -> None:
        self.policy = policy
        self.hosts = hosts or {}
        self.real_dns = real_dns
        self._endpoints: dict[tuple[str, int], Endpoint] = {}

    @classmethod
    def from_snapshot(cls, mesh: Any, egress: Any) -> Egress:
        """``mesh.outbound_traffic_policy`` and ``egress`` checked (EgressError naming the key)."""
        policy = mesh.get("outbound_traffic_policy", ALLOW_ANY) if isinstance(mesh, dict) else ALLOW_ANY
        if policy not in POLICIES:
            raise EgressError(
                f"mesh.outbound_traffic_policy: expected ALLOW_ANY or REGISTRY_ONLY, got {policy!r}")
        if egress is None:
            return cls(policy)
        if not isinstance(egress, dict):
            raise EgressError(f"egress: expected an object or null, got {egress!r}")
        real_dns = egress.get("real_dns", False)
        if not isinstance(real_dns, bool):
            raise EgressError(f"egress.real_dns: expected true or false, got {real_dns!r}")
        raw = egress.get("hosts") or {}
        if not isinstance(raw, dict):
            raise EgressError(f"egress.hosts: expected an object, got {raw!r}")
        hosts: dict[tuple[str, int], tuple[str, int]] = {}
        for name, target in raw.items():
            where = f"egress.hosts.{name}"
            if not isinstance(target, str):
                raise EgressError(f"{where}: expected \"address:port\", got {target!r}")
            hosts[split_hostport(name, 80, where)] = split_hostport(target, 80, where)
        return cls(policy, hosts, real_dns)

    def resolve(self, host: str, port: int) -> tuple[str, int] | None:
        """Where a call to ``host:port`` goes: the map, then real DNS (if on), an IP literal; else None."""
        target = self.hosts.get((host, port))
        if target is not None:
            return target
        if self.real_dns or _is_ip(host):
            return host, port
        return None

    def _endpoint(self, address: str, port: int) -> Endpoint:
        key = (address, port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= _MAX_ENDPOINTS:
                self._endpoints.clear()
            endpoint = self._endpoints[key] = Endpoint(address, port, workload="", instance="")
        return endpoint

    def unmatched(self, request: Request, terminal: Handler) -> Awaitable[Response]:
        """A request whose host no virtual host serves: pass it through or black-hole it."""
        if self.policy == REGISTRY_ONLY:
            request.cluster = BLACKHOLE_CLUSTER
            return answered(Response.local(
                502, f"host '{request.authority}' is not in the mesh's registry "
                     "(outboundTrafficPolicy REGISTRY_ONLY: BlackHoleCluster)\n"))
        request.cluster = PASSTHROUGH_CLUSTER
        try:
            host, port = split_hostport(request.authority or "", 80, "host")
        except EgressError:
            return answered(Response.local(400, f"bad host '{request.authority}'\n"))
        target = self.resolve(host, port)
        if target is None:
            return answered(Response.local(
                503, f"no stand-in for '{host}:{port}' and real DNS is off "
                     "(meshkit deploy external, or --real-dns)\n", "DF"))
        request.endpoint = self._endpoint(*target)
        return terminal(request)
