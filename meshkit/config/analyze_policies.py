"""Analyzer checks of DestinationRules and security policies that ``istioctl`` makes.

Called by `meshkit.config.analyze.analyze`. As in `analyze_routes`, what Istio's validation webhook
refuses is an Error (the apply is refused), what only ``istioctl analyze`` reports is a Warning
that never blocks an apply. The registry checks run only when a registry is given (a running mesh,
or the Services and Deployments of the input): offline, nothing is known to be missing. Codes:

MK0128 E         a subset name that is not a DNS-1123 label (``v1``, ``canary``; not ``V1`` or ``v1.0``)
MK0129 E         an empty ``trafficPolicy`` (``trafficPolicy: {}``)
MK0130 E         ``portLevelMtls`` on a PeerAuthentication without a workload selector
MK0131 W IST0101 a DestinationRule host that matches no service (nor ServiceEntry host)
MK0132 W IST0127 an AuthorizationPolicy whose selector selects no workload
MK0133 W IST0101 an AuthorizationPolicy naming a namespace that does not exist

It reads resources only; it must not change them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

from meshkit.config import codes
from meshkit.config.egress import ServiceEntry
from meshkit.config.hosts import resolve_host
from meshkit.config.messages import Message, Severity
from meshkit.config.registry import RegistryView
from meshkit.config.resources import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    Resource,
    TrafficPolicy,
)
from meshkit.config.selection import ROOT_NAMESPACE, labels_match, of_kind
from meshkit.config.workloads import Deployment, Namespace

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# the labels of the mesh's ingress gateway pods (istio-system), a workload policies may select
_GATEWAY_WORKLOAD = (ROOT_NAMESPACE, {"app": "istio-ingressgateway", "istio": "ingressgateway"})
_ALWAYS_THERE = frozenset({"default", ROOT_NAMESPACE, "kube-system", "kube-public", "kube-node-lease"})


def check_policies(resources: Sequence[Resource], registry: RegistryView | None) -> list[Message]:
    """Every finding of this module about ``resources``."""
    messages: list[Message] = []
    for rule in of_kind(resources, DestinationRule):
        messages.extend(_destination_rule(rule))
    for peer in of_kind(resources, PeerAuthentication):
        if peer.spec.port_level_mtls and not (peer.spec.selector and peer.spec.selector.match_labels):
            scope = "mesh-wide" if peer.metadata.namespace == ROOT_NAMESPACE else "namespace-wide"
            messages.append(Message(
                codes.MK0130, Severity.ERROR, peer.ref, "spec.portLevelMtls",
                f"portLevelMtls requires a workload selector: mesh/namespace peer authentication cannot have "
                f"port level mTLS (this {scope} policy has no selector; Istio refuses it, so its port modes "
                "would never apply)"))
    if registry is None:
        return messages
    messages.extend(_destination_hosts(resources, registry))
    workloads = _workloads(resources, registry)
    namespaces = _namespaces(resources, registry)
    for policy in of_kind(resources, AuthorizationPolicy):
        messages.extend(_authorization_policy(policy, workloads, namespaces))
    return messages


# ---------------------------------------------------------------------------------------------
# DestinationRule
# ---------------------------------------------------------------------------------------------


def _is_empty(policy: TrafficPolicy) -> bool:
    return not policy.model_dump(exclude_none=True)


def _destination_rule(rule: DestinationRule) -> Iterator[Message]:
    empty = 'traffic policy must have at least one field (remove "trafficPolicy: {}" or set a policy)'
    if rule.spec.traffic_policy is not None and _is_empty(rule.spec.traffic_policy):
        yield Message(codes.MK0129, Severity.ERROR, rule.ref, "spec.trafficPolicy", empty)
    for j, subset in enumerate(rule.spec.subsets or []):
        if not _DNS1123_LABEL.match(subset.name) or len(subset.name) > 63:
            yield Message(codes.MK0128, Severity.ERROR, rule.ref, f"spec.subsets[{j}].name",
                          f'subset name is invalid: "{subset.name}" (a DNS-1123 label: lower-case letters, '
                          "digits and '-', starting and ending with a letter or digit, at most 63 "
                          "characters)")
        if subset.traffic_policy is not None and _is_empty(subset.traffic_policy):
            yield Message(codes.MK0129, Severity.ERROR, rule.ref, f"spec.subsets[{j}].trafficPolicy", empty)


def _destination_hosts(resources: Sequence[Resource], registry: RegistryView) -> Iterator[Message]:
    external = {h.strip().lower() for se in of_kind(resources, ServiceEntry) for h in se.spec.hosts}
    external |= {entry.rpartition(":")[0].lower() for entry, _ in registry.external_hosts}
    for rule in of_kind(resources, DestinationRule):
        resolved = resolve_host(rule.spec.host, rule.metadata.namespace)
        if resolved.name is None or rule.spec.host.strip().lower() in external:
            continue  # a wildcard or an external name: not a registry service
        if registry.service(resolved.name, resolved.namespace or "") is None:
            yield Message(codes.MK0131, Severity.WARNING, rule.ref, "spec.host",
                          f'Referenced host not found: "{rule.spec.host}" (no service '
                          f"{resolved.name}.{resolved.namespace} in the registry: this DestinationRule "
                          "applies to nothing until the service exists)")


# ---------------------------------------------------------------------------------------------
# AuthorizationPolicy
# ---------------------------------------------------------------------------------------------


def _workloads(resources: Sequence[Resource], registry: RegistryView) -> list[tuple[str, Mapping[str, str]]]:
    found: list[tuple[str, Mapping[str, str]]] = [(e.namespace, e.labels) for e in registry.endpoints]
    found += [(d.metadata.namespace, d.pod_labels) for d in of_kind(resources, Deployment)]
    found.append(_GATEWAY_WORKLOAD)
    return found


def _namespaces(resources: Sequence[Resource], registry: RegistryView) -> set[str]:
    found = set(_ALWAYS_THERE)
    found |= {s.namespace for s in registry.services} | {e.namespace for e in registry.endpoints}
    found |= {r.metadata.namespace for r in resources if not isinstance(r, Namespace)}
    found |= {r.metadata.name for r in resources if isinstance(r, Namespace)}
    return found


def _authorization_policy(policy: AuthorizationPolicy, workloads: Sequence[tuple[str, Mapping[str, str]]],
                          namespaces: set[str]) -> Iterator[Message]:
    selector = policy.spec.selector.match_labels if policy.spec.selector else None
    if selector:
        namespace = policy.metadata.namespace
        if not any((namespace in (ns, ROOT_NAMESPACE)) and labels_match(selector, labels)
                   for ns, labels in workloads):
            shown = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
            where = "any namespace" if namespace == ROOT_NAMESPACE else f"namespace {namespace}"
            yield Message(codes.MK0132, Severity.WARNING, policy.ref, "spec.selector.matchLabels",
                          f"No matching workloads for this resource with the following labels: {shown} (no "
                          f"workload of {where} has them, so this policy applies to nothing)")
    for i, rule in enumerate(policy.spec.rules or []):
        for j, source in enumerate(rule.from_ or []):
            for name, alias in (("namespaces", "namespaces"), ("not_namespaces", "notNamespaces")):
                for k, value in enumerate(getattr(source.source, name) or []):
                    if "*" in value or value in namespaces:
                        continue
                    yield Message(codes.MK0133, Severity.WARNING, policy.ref,
                                  f"spec.rules[{i}].from[{j}].source.{alias}[{k}]",
                                  f'Referenced namespace not found: "{value}" (no workload, service or '
                                  "Namespace of the mesh is in it)")
