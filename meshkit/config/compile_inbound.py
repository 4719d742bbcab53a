"""The snapshot's ``inbound`` section as far as the control plane's resources decide it: the app
behind the sidecar, the PeerAuthentication mTLS mode, AuthorizationPolicies (with Istio's
``istio.io/dry-run``) and the EnvoyFilter local rate limit (docs/snapshot.md, docs/security.md).

Called by `meshkit.config.compile.compile_snapshot`, which adds the rest of the section (``protocol``
from `tls_routes`, ``jwt`` from `authn`). Which policies select a proxy is `selection`'s business.
It must not touch the outbound side (routes, clusters); pure data in, plain JSON out: no I/O, no
sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshkit.config.envoyfilter import EnvoyFilter, rate_limit_for
from meshkit.config.registry import Node, RegistryView
from meshkit.config.resources import AuthorizationPolicy, Operation, PeerAuthentication, Rule, Source
from meshkit.config.selection import authorization_policies_for, resolve_mtls


def inbound_section(
    node: Node,
    registry: RegistryView,
    peer_authentications: Sequence[PeerAuthentication],
    authorization_policies: Sequence[AuthorizationPolicy],
    envoy_filters: Sequence[EnvoyFilter] = (),
) -> dict[str, Any]:
    """``node``'s ``inbound`` section: app, ``service_port``, mTLS, authz by action, rate limit."""
    service = registry.service(node.service, node.namespace) if node.service else None
    has_app = node.app_port is not None and node.kind == "sidecar"
    app = {"address": "127.0.0.1", "port": node.app_port} if has_app else None
    mtls, _ = resolve_mtls(node.namespace, node.labels, peer_authentications)
    authz: dict[str, list[dict[str, Any]]] = {"deny": [], "allow": [], "audit": []}
    for policy in authorization_policies_for(node.namespace, node.labels, authorization_policies):
        action = policy.spec.effective_action.lower()
        if action in ("allow", "deny") and _dry_run(policy):  # shadow only: evaluated and logged
            action = f"dry_run_{action}"
        authz.setdefault(action, []).append(_authz_policy(policy))
    for policies in authz.values():
        policies.sort(key=lambda p: p["name"])
    return {
        "app": app,
        "service_port": service.port if service else node.app_port,
        "mtls": mtls,
        "authz": authz,
        "rate_limit": rate_limit_for(node.namespace, node.labels, list(envoy_filters))
        if node.kind == "sidecar" else None,
    }


DRY_RUN_ANNOTATION = "istio.io/dry-run"


def _dry_run(policy: AuthorizationPolicy) -> bool:
    """Istio's ``istio.io/dry-run: "true"`` annotation (ALLOW and DENY policies): not enforced."""
    annotations = policy.metadata.annotations or {}
    return str(annotations.get(DRY_RUN_ANNOTATION, "")).strip().lower() == "true"


def _authz_policy(policy: AuthorizationPolicy) -> dict[str, Any]:
    return {
        "name": f"{policy.metadata.namespace}/{policy.metadata.name}",
        "rules": [_authz_rule(rule) for rule in policy.spec.rules or []],
    }


_SOURCE_KEYS = ("principals", "namespaces", "ip_blocks", "remote_ip_blocks", "request_principals")
_OPERATION_KEYS = ("hosts", "methods", "paths", "ports")


def _lists(model: Source | Operation, names: Sequence[str]) -> dict[str, list[str]]:
    """Every field and its ``not_`` form, ``[]`` when unset (Istio treats an empty list as unset)."""
    out: dict[str, list[str]] = {}
    for name in names:
        out[name] = list(getattr(model, name) or [])
        out[f"not_{name}"] = list(getattr(model, f"not_{name}") or [])
    return out


def _authz_rule(rule: Rule) -> dict[str, Any]:
    return {
        "from": [_lists(f.source, _SOURCE_KEYS) for f in rule.from_ or []],
        "to": [_lists(t.operation, _OPERATION_KEYS) for t in rule.to or []],
        "when": [
            {"key": c.key, "values": list(c.values or []), "not_values": list(c.not_values or [])}
            for c in rule.when or []
        ],
    }
