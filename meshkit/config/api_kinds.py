"""Every Kubernetes kind meshkit reads or writes on a cluster, and who uses it: one list.

`API_KINDS` is the single source for three things that must agree or a real cluster breaks:

* the RBAC rules of the control plane's and the operator's ClusterRoles
  (`meshkit.k8s.rbac_rules` renders ``operator/deploy/base/rbac.yaml`` from it);
* the Istio kinds the operator validates, indexes and writes status on (`meshkit.k8s.operator`);
* the Istio and Gateway API kinds the control plane's Kubernetes backend follows
  (``meshkit.k8s.sources.ISTIO_TYPES``, from `config_kinds`).

An Istio or Gateway API kind is *active* once meshkit has a model for it (a class in
`meshkit.config.kinds.RESOURCE_KINDS` with that name and group): adding the model is what
turns its RBAC rules, the operator's handlers and the control plane's watch on, together.
Gateway API's ``Gateway`` shares its kind name with Istio's: it is told apart by group everywhere
(`ApiKind.store_kind`). Workload kinds say explicitly whether the control plane reads them yet.

Pure data: nothing here talks to a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.config.kinds import KINDS_BY_GROUP, RESOURCE_KINDS

READ = ("get", "list", "watch")
# what kopf needs to index, validate and annotate an object (progress lives in annotations)
OPERATOR_WATCH = ("list", "watch", "patch")

CONTROL = "meshkit-control"
OPERATOR = "meshkit-operator"
ROLES = (CONTROL, OPERATOR)
SYSTEM_NAMESPACE = "meshkit-system"  # meshkit.k8s.names.SYSTEM_NAMESPACE
CA_ROOT_SECRET = "meshkit-ca-root"


@dataclass(frozen=True, slots=True)
class ApiKind:
    """One resource as the API addresses it, with the verbs each meshkit component uses on it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    control: tuple[str, ...] = ()  # verbs of the control plane
    operator: tuple[str, ...] = ()  # verbs of the operator on the resource itself
    operator_status: bool = False  # the operator patches its ``status`` subresource
    resource_names: tuple[str, ...] = ()  # restrict the grant to these objects
    # None: active when meshkit has a model of this kind and group; True/False: said here
    enabled: bool | None = None
    # granted by a Role in this namespace only (not the ClusterRole)
    only_in: str | None = None

    @property
    def active(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return (self.kind, self.group) in KINDS_BY_GROUP or any(
            name == self.kind and model.group == self.group for name, model in RESOURCE_KINDS.items())

    @property
    def store_kind(self) -> str:
        """The kind part of the config store's keys: ``Gateway.gateway.networking.k8s.io`` for Gateway
        API's Gateway (Istio's is ``Gateway``), the kind's name otherwise (`Resource.key`)."""
        return f"{self.kind}.{self.group}" if (self.kind, self.group) in KINDS_BY_GROUP else self.kind

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def verbs(self, role: str) -> tuple[str, ...]:
        return self.control if role == CONTROL else self.operator


def _istio(group: str, kind: str, plural: str, version: str = "v1") -> ApiKind:
    """An Istio kind: the control plane mirrors it, the operator validates it and writes its status."""
    return ApiKind(group, version, plural, kind, control=READ, operator=OPERATOR_WATCH, operator_status=True)


def _gateway_api(kind: str, plural: str, namespaced: bool = True) -> ApiKind:
    return ApiKind("gateway.networking.k8s.io", "v1", plural, kind, namespaced=namespaced, control=READ)


API_KINDS: tuple[ApiKind, ...] = (
    # Istio configuration
    _istio("networking.istio.io", "VirtualService", "virtualservices"),
    _istio("networking.istio.io", "DestinationRule", "destinationrules"),
    _istio("networking.istio.io", "Gateway", "gateways"),
    _istio("networking.istio.io", "ServiceEntry", "serviceentries"),
    _istio("networking.istio.io", "EnvoyFilter", "envoyfilters", version="v1alpha3"),
    _istio("security.istio.io", "PeerAuthentication", "peerauthentications"),
    _istio("security.istio.io", "AuthorizationPolicy", "authorizationpolicies"),
    _istio("security.istio.io", "RequestAuthentication", "requestauthentications"),
    _istio("telemetry.istio.io", "Telemetry", "telemetries"),
    # Gateway API
    _gateway_api("GatewayClass", "gatewayclasses", namespaced=False),
    _gateway_api("Gateway", "gateways"),
    _gateway_api("HTTPRoute", "httproutes"),
    # TLSRoute (experimental channel, v1alpha2): followed like the others; a cluster with the standard
    # channel only does not serve it, which the control plane waits out (a missing CRD is retried)
    ApiKind("gateway.networking.k8s.io", "v1alpha2", "tlsroutes", "TLSRoute", control=READ),
    # the service registry and the workloads behind it
    ApiKind("", "v1", "services", "Service", control=READ, enabled=True),
    ApiKind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", control=READ, enabled=True),
    ApiKind("", "v1", "pods", "Pod", control=READ, enabled=True),
    # the operator indexes namespace labels for injection
    ApiKind("", "v1", "namespaces", "Namespace", namespaced=False, control=READ,
            operator=("list", "watch"), enabled=True),
    # read by the local mesh's workload model; the control plane does not read them on a cluster yet
    ApiKind("", "v1", "serviceaccounts", "ServiceAccount", control=READ, enabled=False),
    ApiKind("apps", "v1", "deployments", "Deployment", control=READ, enabled=False),
    # NetworkPolicy: enforced by the cluster's CNI; `--context apply` writes it with the user's own
    # credentials (meshkit.k8s.cluster_config.NATIVE_TYPES), no meshkit component reads it on a cluster
    ApiKind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", enabled=False),
    # the mesh's root CA, kept in a Secret so it outlives the control plane's pod (create: the
    # first start; RBAC cannot restrict create by name, so the grant is a Role in meshkit-system)
    ApiKind("", "v1", "secrets", "Secret", control=("get",), resource_names=(CA_ROOT_SECRET,),
            only_in=SYSTEM_NAMESPACE, enabled=True),
    ApiKind("", "v1", "secrets", "Secret", control=("create",), only_in=SYSTEM_NAMESPACE, enabled=True),
    # the operator copies the root certificate (not the key) into each injected namespace
    ApiKind("", "v1", "secrets", "Secret", operator=("get",), resource_names=(CA_ROOT_SECRET,),
            only_in=SYSTEM_NAMESPACE, enabled=True),
    ApiKind("", "v1", "configmaps", "ConfigMap", operator=("get", "patch"),
            resource_names=("meshkit-ca-root-cert",), enabled=True),
    ApiKind("", "v1", "configmaps", "ConfigMap", operator=("create",), enabled=True),
    # the CA checks the projected service-account tokens sidecars present
    ApiKind("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False,
            control=("create",), enabled=True),
    # kopf: resource discovery, events, and the CA bundle of the two webhook configurations it serves
    ApiKind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
            namespaced=False, operator=("list", "watch"), enabled=True),
    ApiKind("", "v1", "events", "Event", operator=("create",), enabled=True),
    ApiKind("events.k8s.io", "v1", "events", "Event", operator=("create",), enabled=True),
    ApiKind("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration", namespaced=False, operator=("get", "patch"),
            resource_names=("meshkit-sidecar-injector",), enabled=True),
    ApiKind("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration", namespaced=False, operator=("get", "patch"),
            resource_names=("meshkit-validator",), enabled=True),
)

ISTIO_GROUPS = frozenset({"networking.istio.io", "security.istio.io", "telemetry.istio.io"})
GATEWAY_API_GROUP = "gateway.networking.k8s.io"


def active_kinds() -> list[ApiKind]:
    return [kind for kind in API_KINDS if kind.active]


def istio_kinds() -> list[ApiKind]:
    """The active Istio kinds: validated and given status by the operator, mirrored by the control plane."""
    return [kind for kind in active_kinds() if kind.group in ISTIO_GROUPS]


def config_kinds() -> list[ApiKind]:
    """The active kinds the control plane mirrors as config: the Istio kinds and the Gateway API kinds
    (GatewayClass, Gateway, HTTPRoute from the Gateway API standard channel, TLSRoute from its
    experimental channel; the operator neither validates them nor writes their status)."""
    return [kind for kind in active_kinds() if kind.group in ISTIO_GROUPS or kind.group == GATEWAY_API_GROUP]
