"""Istio's outbound IP ranges on the local mesh: which destinations a pod's sidecar intercepts.

Istio's ``istioctl install --set values.global.proxy.includeIPRanges=CIDR[,CIDR]`` (default ``*``:
everything) and ``excludeIPRanges`` (default empty), and the pod annotations
``traffic.sidecar.istio.io/includeOutboundIPRanges`` / ``excludeOutboundIPRanges`` (which replace the
global values for that pod), decide which outbound connections iptables sends to the sidecar; the
others leave the pod directly, as from a pod without a sidecar.

The local mesh has no pod or service addresses, so it gives each host a notional one (the address plan,
docs/local-mesh.md): a Service ``NAME.NAMESPACE`` has a cluster IP in kind's service range
``10.96.0.0/16`` (`cluster_ip`; ``10.96.0.1`` is the ``kubernetes`` Service, as on every cluster), and
every other host (the external stand-ins ``httpbin.org``, ``edition.cnn.com``...) an address in
``203.0.113.0/24`` (TEST-NET-3, outside any cluster range; `external_ip`). An IP literal is itself.

It must not: open connections or read the mesh's state (`meshkit.runtime.curl` does), or know a
Service's endpoints.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshkit.config import codes
from meshkit.config.messages import Message, Severity

if TYPE_CHECKING:
    from meshkit.config.workloads import Deployment

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SERVICE_CIDR = "10.96.0.0/16"  # kind's default serviceSubnet (kube-apiserver --service-cluster-ip-range)
EXTERNAL_CIDR = "203.0.113.0/24"  # TEST-NET-3: the notional addresses of hosts outside the mesh
KUBERNETES_SERVICE_IP = "10.96.0.1"
ALL = "*"
INCLUDE_SETTING = "values.global.proxy.includeIPRanges"
EXCLUDE_SETTING = "values.global.proxy.excludeIPRanges"
INCLUDE_ANNOTATION = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_ANNOTATION = "traffic.sidecar.istio.io/excludeOutboundIPRanges"


class IPRangeError(ValueError):
    """A bad IP range list: names the setting or annotation (``field``) and the bad entry."""

    def __init__(self, field: str, entry: str, reason: str) -> None:
        self.field, self.entry = field, entry
        super().__init__(f"{field}: {entry!r} is not a CIDR such as 10.96.0.0/16 ({reason})")


@dataclass(frozen=True, slots=True)
class IPRanges:
    """A parsed range list: ``everything`` (Istio's ``*``), or the networks (empty: nothing)."""

    everything: bool = False
    networks: tuple[IPNetwork, ...] = ()

    def contains(self, address: IPAddress) -> bool:
        return self.everything or any(address.version == n.version and address in n for n in self.networks)

    def text(self) -> str:
        """Istio's form: ``*``, or comma-separated CIDRs (empty for none)."""
        return ALL if self.everything else ",".join(str(n) for n in self.networks)


def parse_ranges(text: str, field: str) -> IPRanges:
    """``"10.0.0.1/24,172.16.0.0/12"`` / ``"*"`` / ``""`` -> `IPRanges`; `IPRangeError` naming ``field``.

    As Istio's istio-iptables: host bits are allowed (``10.0.0.1/24`` is ``10.0.0.0/24``), a bare address
    is a /32 (/128), quotes from a shell-less copy (``"10.0.0.1/24"``) are taken off.
    """
    cleaned = text.strip().strip("\"'").strip()
    entries = [entry.strip() for entry in cleaned.split(",")] if cleaned else []
    if ALL in entries:
        if len(entries) > 1:
            raise IPRangeError(field, cleaned, "'*' stands alone: it already means every address")
        return IPRanges(everything=True)
    networks = []
    for entry in entries:
        if not entry:
            raise IPRangeError(field, cleaned, "an empty entry between commas")
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as error:
            raise IPRangeError(field, entry, str(error)) from None
    return IPRanges(networks=tuple(networks))


@dataclass(frozen=True, slots=True)
class Interception:
    """Which outbound destinations a sidecar intercepts: in ``include`` and not in ``exclude``."""

    include: IPRanges = IPRanges(everything=True)
    exclude: IPRanges = IPRanges()

    @property
    def default(self) -> bool:
        return self.include.everything and not self.exclude.networks

    def intercepts(self, address: IPAddress) -> bool:
        return self.include.contains(address) and not self.exclude.contains(address)

    def for_pod(self, annotations: Mapping[str, str]) -> Interception:
        """The pod's own: its annotations replace the global value they name (as Istio's injector)."""
        include, exclude = self.include, self.exclude
        if INCLUDE_ANNOTATION in annotations:
            include = parse_ranges(str(annotations[INCLUDE_ANNOTATION]), INCLUDE_ANNOTATION)
        if EXCLUDE_ANNOTATION in annotations:
            exclude = parse_ranges(str(annotations[EXCLUDE_ANNOTATION]), EXCLUDE_ANNOTATION)
        return Interception(include, exclude)

    def to_json(self) -> dict[str, str]:
        return {"includeIPRanges": self.include.text(), "excludeIPRanges": self.exclude.text()}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Interception:
        return cls(parse_ranges(data.get("includeIPRanges", ALL), INCLUDE_SETTING),
                   parse_ranges(data.get("excludeIPRanges", ""), EXCLUDE_SETTING))


def interception_settings(settings: Sequence[str]) -> tuple[Interception, list[str]]:
    """istioctl's ``--set values.global.proxy.includeIPRanges=...`` / ``excludeIPRanges=...`` out of
    ``settings``: the `Interception` they give (the default for those not given), and the others."""
    found: dict[str, IPRanges] = {}
    rest = []
    for item in settings:
        path, _, raw = item.partition("=")
        path = path.strip()
        if path in (INCLUDE_SETTING, EXCLUDE_SETTING):
            found[path] = parse_ranges(raw, f"--set {path}")
        else:
            rest.append(item)
    return Interception(found.get(INCLUDE_SETTING, IPRanges(everything=True)),
                        found.get(EXCLUDE_SETTING, IPRanges())), rest


def check_annotations(deployment: Deployment) -> list[Message]:
    """MK0309 (Error) for a pod template's include/excludeOutboundIPRanges annotation: not a range list."""
    found = []
    for name in (INCLUDE_ANNOTATION, EXCLUDE_ANNOTATION):
        value = (deployment.spec.template.metadata.annotations or {}).get(name)
        if value is None:
            continue
        try:
            parse_ranges(str(value), name)
        except IPRangeError as error:
            found.append(Message(codes.MK0309, Severity.ERROR, deployment.ref,
                                 f"spec.template.metadata.annotations[{name}]",
                                 f"{error}; nothing was applied"))
    return found


def cluster_ip(service: str, namespace: str) -> ipaddress.IPv4Address:
    """The notional cluster IP of Service ``service.namespace``: stable, in `SERVICE_CIDR`."""
    if (service, namespace) == ("kubernetes", "default"):
        return ipaddress.IPv4Address(KUBERNETES_SERVICE_IP)
    digest = int.from_bytes(hashlib.sha256(f"{service}.{namespace}".encode()).digest()[:4], "big")
    network = ipaddress.IPv4Network(SERVICE_CIDR)
    return network[2 + digest % (network.num_addresses - 3)]  # not .0, .1 (kubernetes), the broadcast


def external_ip(host: str) -> ipaddress.IPv4Address:
    """The notional address of a host outside the mesh (``httpbin.org``): stable, in `EXTERNAL_CIDR`."""
    digest = hashlib.sha256(host.lower().encode()).digest()[0]
    return ipaddress.IPv4Network(EXTERNAL_CIDR)[1 + digest % 254]


def literal(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one (``10.96.0.10``, ``[::1]`` without brackets), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
