"""Kubernetes ``NetworkPolicy`` (networking.k8s.io/v1): the model and its egress rules, evaluated.

The model keeps Kubernetes' field names and checks them by name (``podSelector``, ``policyTypes``,
``egress[].to[]`` / ``ingress[].from[]`` peers with ``namespaceSelector``, ``podSelector`` and
``ipBlock``, ``ports[]`` with ``protocol``, ``port`` and ``endPort``).

`egress_allowed` answers Kubernetes' question for one connection: may a pod (namespace, labels)
open a connection to a destination (a pod: namespace and labels; or a host outside the cluster)
on a port? As Kubernetes: a pod that no policy with ``Egress`` in its ``policyTypes`` selects is
unrestricted; a selected pod may connect only where at least one egress rule of one of those
policies allows (the union of the rules). A rule with no ``to`` allows every destination, a rule
with no ``ports`` every port. Namespaces are matched by their labels, which always carry
``kubernetes.io/metadata.name``. DNS is implicit on the local mesh (there is no DNS server to
allow or block): nothing here decides name resolution.

What the local mesh cannot model is said by `local_limits` (the analyzer turns it into warnings):
``ingress`` rules are accepted, not enforced; an ``ipBlock`` matches by its address range only
when that range is everything (``0.0.0.0/0`` or ``::/0``): every process listens on 127.0.0.1, and
the notional addresses `meshkit.config.ip_ranges` gives hosts (for sidecar interception) are not
matched here yet, so any narrower block matches nothing.
A named port (``port: https``) matches nothing either, for the same reason (no container ports).

This module is data only: no sockets, no processes, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshkit.config import codes
from meshkit.config.messages import Message, Severity
from meshkit.config.resources import IstioModel, Resource

NAME_LABEL = "kubernetes.io/metadata.name"  # the label Kubernetes puts on every namespace


class Requirement(IstioModel):
    """One ``matchExpressions`` entry of a Kubernetes label selector."""

    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values_as_operator_needs(self) -> Requirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs a non-empty values list")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        inside = present and labels[self.key] in (self.values or [])
        return inside if self.operator == "In" else not inside


class Selector(IstioModel):
    """A Kubernetes label selector; ``{}`` selects everything."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[Requirement] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in (self.match_labels or {}).items()) and \
            all(r.matches(labels) for r in self.match_expressions or [])


class IPBlock(IstioModel):
    cidr: str
    except_: list[str] | None = Field(default=None, alias="except")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/16") from None
        return value

    @property
    def everything(self) -> bool:
        """Does it cover every address (the only range the local mesh can match, see the module)?"""
        return ipaddress.ip_network(self.cidr, strict=False).prefixlen == 0 and not self.except_


class Peer(IstioModel):
    """One ``to``/``from`` entry: ``ipBlock`` alone, or ``namespaceSelector`` and/or ``podSelector``."""

    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Peer:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            raise ValueError("ipBlock cannot be combined with podSelector or namespaceSelector in one peer")
        if self.ip_block is None and not selectors:
            raise ValueError("a peer needs one of podSelector, namespaceSelector, ipBlock")
        return self


class PolicyPort(IstioModel):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int | str | None = None
    end_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("port")
    @classmethod
    def _port(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError(f"port {value} is not in 1-65535")
        return value

    @model_validator(mode="after")
    def _range(self) -> PolicyPort:
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise ValueError("endPort needs a numeric port")
            if self.end_port < self.port:
                raise ValueError(f"endPort {self.end_port} is below port {self.port}")
        return self

    def matches(self, port: int, protocol: str) -> bool:
        if protocol != self.protocol:
            return False
        if self.port is None:
            return True
        if not isinstance(self.port, int):
            return False  # a named port: the local mesh has no container port names (see the module)
        return self.port <= port <= (self.end_port or self.port)


class EgressRule(IstioModel):
    to: list[Peer] | None = None
    ports: list[PolicyPort] | None = None


class IngressRule(IstioModel):
    from_: list[Peer] | None = Field(default=None, alias="from")
    ports: list[PolicyPort] | None = None


class NetworkPolicySpec(IstioModel):
    pod_selector: Selector
    policy_types: list[Literal["Ingress", "Egress"]] | None = None
    egress: list[EgressRule] | None = None
    ingress: list[IngressRule] | None = None

    @property
    def types(self) -> tuple[str, ...]:
        """Kubernetes' default: ``Ingress``, plus ``Egress`` when the policy has egress rules."""
        if self.policy_types:
            return tuple(self.policy_types)
        return ("Ingress", "Egress") if self.egress else ("Ingress",)


class NetworkPolicy(Resource):
    group = "networking.k8s.io"
    versions = ("v1",)

    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    spec: NetworkPolicySpec


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where a connection goes: a pod (``namespace`` and ``labels``) or, with ``namespace`` None, a host
    outside the cluster (the external stand-ins). ``port`` is the Service's (the notional) port."""

    namespace: str | None
    labels: Mapping[str, str]
    port: int
    protocol: str = "TCP"


def namespace_labels(name: str, labels: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """A namespace's labels as Kubernetes has them: its own plus ``kubernetes.io/metadata.name``."""
    return {**labels.get(name, {}), NAME_LABEL: name}


def selecting_egress(policies: Sequence[NetworkPolicy], namespace: str,
                     pod_labels: Mapping[str, str]) -> list[NetworkPolicy]:
    """The policies of ``namespace`` with ``Egress`` in their types whose podSelector selects the pod."""
    return [p for p in policies if p.metadata.namespace == namespace and "Egress" in p.spec.types
            and p.spec.pod_selector.matches(pod_labels)]


def _peer_matches(peer: Peer, policy_namespace: str, to: Destination,
                  namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.everything
    if to.namespace is None:
        return False  # a host outside the cluster is no pod: only an ipBlock matches it
    if peer.namespace_selector is None:
        in_namespace = to.namespace == policy_namespace  # podSelector alone: the policy's namespace
    else:
        in_namespace = peer.namespace_selector.matches(namespace_labels(to.namespace, namespaces))
    return in_namespace and (peer.pod_selector is None or peer.pod_selector.matches(to.labels))


def rule_allows(rule: EgressRule, policy_namespace: str, to: Destination,
                namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    if rule.ports and not any(p.matches(to.port, to.protocol) for p in rule.ports):
        return False
    return rule.to is None or not rule.to or any(
        _peer_matches(peer, policy_namespace, to, namespaces) for peer in rule.to)


def egress_allowed(selecting: Sequence[NetworkPolicy], to: Destination,
                   namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    """May a pod that ``selecting`` (from `selecting_egress`) select connect to ``to``? No policy: yes.
    ``namespaces`` maps namespace names to their labels (without the automatic one)."""
    if not selecting:
        return True
    return any(rule_allows(rule, policy.metadata.namespace, to, namespaces)
               for policy in selecting for rule in policy.spec.egress or [])


def local_limits(policy: NetworkPolicy) -> list[tuple[str, str]]:
    """(field path, why) for every part of ``policy`` the local mesh does not enforce as written."""
    found: list[tuple[str, str]] = []
    spec = policy.spec
    if "Ingress" in spec.types:
        found.append(("spec.policyTypes", "Ingress: ingress rules are accepted but not enforced on the "
                      "local mesh (only egress is); on Kubernetes the CNI enforces them"))
    rules: list[tuple[str, list[Peer] | None, list[PolicyPort] | None]] = [
        *((f"spec.egress[{i}]", r.to, r.ports) for i, r in enumerate(spec.egress or [])),
        *((f"spec.ingress[{i}]", r.from_, r.ports) for i, r in enumerate(spec.ingress or []))]
    for where, peers, ports in rules:
        for j, peer in enumerate(peers or []):
            if peer.ip_block is not None and not peer.ip_block.everything:
                found.append((f"{where}.{'to' if 'egress' in where else 'from'}[{j}].ipBlock",
                              f"{peer.ip_block.cidr}: NetworkPolicy does not match the local mesh's notional "
                              "addresses yet, so only 0.0.0.0/0 or ::/0 (without except) matches; this block "
                              "matches nothing"))
        for j, port in enumerate(ports or []):
            if isinstance(port.port, str):
                found.append((f"{where}.ports[{j}].port", f"{port.port!r}: named ports match nothing on the "
                              "local mesh (no container port names); give the number"))
    return found


def check_network_policies(resources: Sequence[Resource]) -> list[Message]:
    """MK0320 (warning) for each part of a NetworkPolicy the local mesh accepts and does not enforce."""
    return [Message(codes.MK0320, Severity.WARNING, policy.ref, field, text)
            for policy in resources if isinstance(policy, NetworkPolicy)
            for field, text in local_limits(policy)]


def namespace_label_map(resources: Sequence[Resource]) -> dict[str, dict[str, str]]:
    """Namespace name -> its labels, from the Namespace objects of ``resources``."""
    return {r.metadata.name: dict(r.metadata.labels or {}) for r in resources if r.kind == "Namespace"}
