"""Every Istio and Kubernetes kind meshkit knows, by name: the ones it implements, the ones it names as
unsupported and the Kubernetes ones it ignores with a warning."""

from __future__ import annotations

from meshkit.config.authn import RequestAuthentication
from meshkit.config.egress import ServiceEntry
from meshkit.config.envoyfilter import EnvoyFilter
from meshkit.config.gateway_api import GATEWAY_API_KINDS, SAME_NAME_KINDS
from meshkit.config.gateways import Gateway
from meshkit.config.meshconfig import ConfigMap
from meshkit.config.network_policy import NetworkPolicy
from meshkit.config.resources import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    Resource,
    Telemetry,
    VirtualService,
)
from meshkit.config.secrets import Secret
from meshkit.config.workloads import IGNORED_KINDS, WORKLOAD_KINDS

# The Istio kinds (custom resources on Kubernetes: meshkit.k8s.crds makes their CRDs).
ISTIO_KINDS: dict[str, type[Resource]] = {
    cls.__name__: cls
    for cls in (VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, EnvoyFilter,
                Telemetry, Gateway, RequestAuthentication, ServiceEntry)
}

# Every kind `meshkit apply` takes: the Istio kinds, the Gateway API kinds (their CRDs come from the
# Gateway API standard channel, not from meshkit) and the Kubernetes workload kinds of Istio's samples.
# ConfigMap: Istio's mesh config (istio-system/istio) and files a Deployment mounts; Secret: types
# kubernetes.io/tls and Opaque (credentialName, mounted files); the loader ignores other Secrets with MK0009.
# NetworkPolicy: enforced for egress where the local mesh connects for a pod (meshkit.config.network_policy).
_KUBERNETES_KINDS: tuple[type[Resource], ...] = (*WORKLOAD_KINDS, ConfigMap, Secret, NetworkPolicy)
RESOURCE_KINDS: dict[str, type[Resource]] = {
    **ISTIO_KINDS, **GATEWAY_API_KINDS, **{cls.__name__: cls for cls in _KUBERNETES_KINDS}}

# Kubernetes kinds of Istio's sample files that the local mesh does not model: loaded as a warning
# ("ignored"), never a reason to refuse the file.
IGNORED_KUBERNETES_KINDS = IGNORED_KINDS

# (kind, group) -> model for kinds whose name an Istio kind already has (Gateway API's Gateway)
KINDS_BY_GROUP = SAME_NAME_KINDS

# Istio kinds that exist but meshkit does not implement (yet): named as such, not as unknown.
UNSUPPORTED_ISTIO_KINDS = frozenset(
    {"Sidecar", "WorkloadEntry", "WorkloadGroup", "ProxyConfig", "WasmPlugin"}
)
