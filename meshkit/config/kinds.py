"""Every Istio kind meshkit knows, by name: the ones it implements and the ones it names as unsupported."""

from __future__ import annotations

from meshkit.config.envoyfilter import EnvoyFilter
from meshkit.config.resources import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    Resource,
    Telemetry,
    VirtualService,
)

RESOURCE_KINDS: dict[str, type[Resource]] = {
    cls.__name__: cls
    for cls in (VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, EnvoyFilter,
                Telemetry)
}

# Istio kinds that exist but meshkit does not implement (yet): named as such, not as unknown.
UNSUPPORTED_ISTIO_KINDS = frozenset(
    {"Gateway", "ServiceEntry", "Sidecar", "WorkloadEntry", "WorkloadGroup",
     "RequestAuthentication", "ProxyConfig", "WasmPlugin"}
)
