"""Resource kind names as people type them (kubectl-style: plural, lower case, short names) -> Kind."""

from __future__ import annotations

from meshkit.config import codes
from meshkit.config.kinds import RESOURCE_KINDS
from meshkit.config.messages import ConfigError, Message, Severity

SHORT_NAMES: dict[str, str] = {
    "vs": "VirtualService",
    "dr": "DestinationRule",
    "pa": "PeerAuthentication",
    "ap": "AuthorizationPolicy",
    "ef": "EnvoyFilter",
    "gw": "Gateway",
    "deploy": "Deployment",
    "svc": "Service",
    "sa": "ServiceAccount",
    "ns": "Namespace",
    "ra": "RequestAuthentication",
    "se": "ServiceEntry",
    "cm": "ConfigMap",
    "netpol": "NetworkPolicy",
}
# kubectl's full names, the way to name Gateway API's Gateway (``gateway`` is Istio's)
# (and ``gtw``, the short name of its CRD: `kubectl delete gtw cnn-egress-gateway`)
FULL_NAMES: dict[str, str] = {"gateways.gateway.networking.k8s.io": "Gateway.gateway.networking.k8s.io",
                              "gateway.gateway.networking.k8s.io": "Gateway.gateway.networking.k8s.io",
                              "gtw": "Gateway.gateway.networking.k8s.io"}


def _aliases() -> dict[str, str]:
    table = {**SHORT_NAMES, **FULL_NAMES}
    for kind in RESOURCE_KINDS:
        lower = kind.lower()
        table[lower] = kind
        table[lower + "s"] = kind
        table[lower.removesuffix("y") + "ies"] = kind  # authorizationpolicies
    return table


def resolve_kind(name: str) -> str | None:
    """``"vs"``, ``"virtualservices"``, ``"VirtualService"`` -> ``"VirtualService"``; ``"all"`` -> None.

    Raises ConfigError naming the known kinds when ``name`` is none of them.
    """
    if name.lower() == "all":
        return None
    kind = _aliases().get(name.lower())
    if kind is None:
        known = ", ".join(f"{kind} ({short})" for short, kind in SHORT_NAMES.items())
        text = f"unknown resource kind {name!r} (known: {known}, or all)"
        raise ConfigError([Message(codes.MK0930, Severity.ERROR, name, "kind", text)])
    return kind
