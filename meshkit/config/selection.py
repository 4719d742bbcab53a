"""Which resources apply where: Istio's precedence rules, shared by `compile` and `analyze`.

- VirtualService for a host: one per host; the one in the service's namespace first, then by
  (namespace, name). Istio uses the oldest; meshkit has no creation time, so order is by name.
- DestinationRule for a host: client namespace, then service namespace, then the root namespace,
  then any other, each by name (Istio's lookup order).
- PeerAuthentication for a workload: workload selector > namespace-wide > mesh-wide (root namespace
  ``istio-system``); ``UNSET`` inherits; default PERMISSIVE. Port-level modes only on workload policies.
- AuthorizationPolicy for a workload: those in its namespace (selector matching or absent) and those in
  the root namespace (selector matching or absent).
- Telemetry (tracing) for a workload: workload selector > namespace-wide > mesh-wide (root namespace),
  each field inherited from the less specific one when unset; the mesh config's sampling below all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from meshkit.config.hosts import resolve_host
from meshkit.config.resources import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    Resource,
    Telemetry,
    VirtualService,
    WorkloadSelector,
)

ROOT_NAMESPACE = "istio-system"
DEFAULT_MTLS_MODE = "PERMISSIVE"

R = TypeVar("R", bound=Resource)


def of_kind(resources: Iterable[Resource], kind: type[R]) -> list[R]:
    """Resources of one kind, sorted by (namespace, name) so every choice below is deterministic.

    A Kind/namespace/name given more than once (analyzer error MK0114) keeps its last
    occurrence, as ``kubectl apply`` of the same input would.
    """
    latest = {r.key: r for r in resources if isinstance(r, kind)}
    return [latest[key] for key in sorted(latest)]


def labels_match(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """True when every selector label is present with the same value (an empty selector matches all)."""
    return all(labels.get(key) == value for key, value in (selector or {}).items())


def _has_selector(selector: WorkloadSelector | None) -> bool:
    return selector is not None and bool(selector.match_labels)


def exported_to(owner_namespace: str, export_to: Sequence[str] | None, namespace: str) -> bool:
    """Istio's ``exportTo``: is a rule of ``owner_namespace`` visible from ``namespace``? Absent or
    ``*``: everywhere; ``.``: its own namespace; names: those namespaces; ``~``: nowhere."""
    if not export_to:
        return True
    return "*" in export_to or namespace in export_to or ("." in export_to and owner_namespace == namespace)


def virtual_services_for(
    services_fqdn: str, service_namespace: str, virtual_services: Sequence[VirtualService]
) -> list[VirtualService]:
    """Every VirtualService claiming the host, the one that wins first."""
    claiming = [
        vs for vs in virtual_services
        if any(resolve_host(h, vs.metadata.namespace).host == services_fqdn for h in vs.spec.hosts)
    ]
    return sorted(claiming, key=lambda vs: (vs.metadata.namespace != service_namespace, vs.key))


def destination_rules_for(
    service_fqdn: str, service_namespace: str, client_namespace: str, rules: Sequence[DestinationRule]
) -> list[DestinationRule]:
    """Every DestinationRule for the host, the one that wins first."""
    matching = [r for r in rules if resolve_host(r.spec.host, r.metadata.namespace).host == service_fqdn]

    def precedence(rule: DestinationRule) -> tuple[int, bool, tuple[str, str, str]]:
        ns = rule.metadata.namespace
        order = (client_namespace, service_namespace, ROOT_NAMESPACE)
        # a rule with a workloadSelector (already matched to the client) wins in its namespace
        return (order.index(ns) if ns in order else len(order)), rule.spec.workload_selector is None, rule.key

    return sorted(matching, key=precedence)


def peer_authentications_for(
    namespace: str, labels: Mapping[str, str], policies: Sequence[PeerAuthentication]
) -> tuple[PeerAuthentication | None, PeerAuthentication | None, PeerAuthentication | None]:
    """(workload, namespace, mesh) policies that apply to a workload; each may be None."""
    workload = next(
        (p for p in policies if p.metadata.namespace == namespace and _has_selector(p.spec.selector)
         and labels_match(p.spec.selector.match_labels if p.spec.selector else None, labels)),
        None,
    )
    namespace_wide = next(
        (p for p in policies if p.metadata.namespace == namespace and not _has_selector(p.spec.selector)),
        None,
    )
    mesh = next(
        (p for p in policies
         if p.metadata.namespace == ROOT_NAMESPACE and not _has_selector(p.spec.selector)),
        None,
    )
    return workload, namespace_wide, mesh


def resolve_mtls(
    namespace: str, labels: Mapping[str, str], policies: Sequence[PeerAuthentication]
) -> tuple[dict[str, object], PeerAuthentication | None]:
    """The snapshot's ``inbound.mtls`` for a workload, and the policy that decided its mode (or None)."""
    workload, namespace_wide, mesh = peer_authentications_for(namespace, labels, policies)
    mode = DEFAULT_MTLS_MODE
    decided_by: PeerAuthentication | None = None
    for policy in (mesh, namespace_wide, workload):
        if policy is not None and policy.spec.mtls is not None and policy.spec.mtls.mode != "UNSET":
            mode = policy.spec.mtls.mode
            decided_by = policy
    port_level: dict[str, str] = {}
    if workload is not None and workload.spec.port_level_mtls:
        for port, setting in sorted(workload.spec.port_level_mtls.items()):
            port_level[str(port)] = mode if setting.mode == "UNSET" else setting.mode
    return {"mode": mode, "port_level": port_level}, decided_by


class _Selecting(Protocol):
    """A policy kind with ``metadata.namespace`` and an optional ``spec.selector.matchLabels``."""

    @property
    def metadata(self) -> Any: ...

    @property
    def spec(self) -> Any: ...


P = TypeVar("P", bound=_Selecting)


def policies_for(namespace: str, labels: Mapping[str, str], policies: Sequence[P]) -> list[P]:
    """Policies selecting a workload: its namespace's and the root namespace's whose selector (if any)
    matches ``labels``, in the given order. AuthorizationPolicy, RequestAuthentication, ..."""
    selected = []
    for policy in policies:
        if policy.metadata.namespace not in (namespace, ROOT_NAMESPACE):
            continue
        selector = policy.spec.selector
        if labels_match(selector.match_labels if selector else None, labels):
            selected.append(policy)
    return selected


def authorization_policies_for(
    namespace: str, labels: Mapping[str, str], policies: Sequence[AuthorizationPolicy]
) -> list[AuthorizationPolicy]:
    """AuthorizationPolicies selecting a workload (`policies_for`)."""
    return policies_for(namespace, labels, policies)


def telemetries_for(
    namespace: str, labels: Mapping[str, str], telemetries: Sequence[Telemetry]
) -> list[Telemetry]:
    """The Telemetry resources that apply to a workload, least specific first (mesh, namespace, workload)."""
    mesh = next((t for t in telemetries
                 if t.metadata.namespace == ROOT_NAMESPACE and not _has_selector(t.spec.selector)), None)
    namespace_wide = next((t for t in telemetries
                           if t.metadata.namespace == namespace and not _has_selector(t.spec.selector)), None)
    workload = next(
        (t for t in telemetries if t.metadata.namespace == namespace and _has_selector(t.spec.selector)
         and labels_match(t.spec.selector.match_labels if t.spec.selector else None, labels)),
        None,
    )
    return [t for t in (mesh, namespace_wide, workload) if t is not None]


def resolve_tracing(
    namespace: str, labels: Mapping[str, str], telemetries: Sequence[Telemetry], mesh_sampling: float
) -> tuple[dict[str, object], Telemetry | None]:
    """The snapshot's ``tracing`` for a workload (sampling percent, whether spans are reported) and the
    Telemetry that set the sampling (None: the mesh config's ``defaultConfig.tracing.sampling``)."""
    sampling, report = mesh_sampling, True
    decided_by: Telemetry | None = None
    for telemetry in telemetries_for(namespace, labels, telemetries):
        for tracing in telemetry.spec.tracing or []:
            if tracing.random_sampling_percentage is not None:
                sampling = tracing.random_sampling_percentage
                decided_by = telemetry
            if tracing.disable_span_reporting is not None:
                report = not tracing.disable_span_reporting
    return {"sampling": sampling, "report": report}, decided_by
