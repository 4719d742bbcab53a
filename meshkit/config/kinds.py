"""Every Istio kind meshkit knows, by name: the ones it implements and the ones it names as unsupported."""

from __future__ import annotations

from meshkit.config.authn import RequestAuthentication
from meshkit.config.envoyfilter import EnvoyFilter
from meshkit.config.resources import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    Resource,
    VirtualService,
)

RESOURCE_KINDS: dict[str, type[Resource]] = {
    cls.__name__: cls
    for cls in (VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, EnvoyFilter,
                RequestAuthentication)
}

# Istio kinds that exist but meshkit does not implement (yet): named as such, not as unknown.
UNSUPPORTED_ISTIO_KINDS = frozenset(
    {"Gateway", "ServiceEntry", "Sidecar", "WorkloadEntry", "WorkloadGroup",
     "Telemetry", "ProxyConfig", "WasmPlugin"}
)
