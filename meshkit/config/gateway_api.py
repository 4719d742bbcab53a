"""The Kubernetes Gateway API kinds meshkit reads (``gateway.networking.k8s.io/v1``): models only.

``GatewayClass`` (the ``istio`` class), ``Gateway`` (HTTP, HTTPS and TLS Passthrough listeners;
`KubeGateway`, as its name is Istio's ``Gateway`` too), ``HTTPRoute`` and ``TLSRoute`` (v1alpha2,
`KubeTLSRoute`). A route attaches to a Service (``parentRefs`` kind Service: mesh traffic, the
GAMMA pattern), to a ServiceEntry (kind ServiceEntry, group networking.istio.io: mesh traffic to
its hosts) or to a Gateway. A Gateway annotated ``networking.istio.io/service-type: ClusterIP``
has its own gateway proxy, ``<name>-istio`` (`KubeGateway.deployed`: an egress or internal
gateway); the others are served by the local mesh's one ingress. A backendRef is a Service or,
kind Hostname of group networking.istio.io, an external host. Every
field of the standard channel meshkit does not implement is refused by name
(``unsupported_fields``), and a filter ``type`` that Gateway API does not define is a named
error; a fault-injection-like filter says that Gateway API has no fault injection.

How a route becomes snapshot routes lives in `meshkit.config.httproutes`; its ``status`` too.
Data only: no sockets, no compile.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from meshkit.config.resources import DurationStr, IstioModel, Resource

GROUP = "gateway.networking.k8s.io"
ISTIO_NETWORKING = "networking.istio.io"  # the group of a ServiceEntry parent and a Hostname backend
ISTIO_CONTROLLER = "istio.io/gateway-controller"
# the filter types of Gateway API v1 (standard + experimental channel)
FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "URLRewrite",
                "RequestRedirect", "ExtensionRef", "CORS")
SUPPORTED_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "URLRewrite",
                     "RequestRedirect")
_FAULT_WORDS = ("fault", "delay", "abort", "chaos")
_FILTER_FIELDS = {"RequestHeaderModifier": ("request_header_modifier", "requestHeaderModifier"),
                  "ResponseHeaderModifier": ("response_header_modifier", "responseHeaderModifier"),
                  "RequestMirror": ("request_mirror", "requestMirror"),
                  "URLRewrite": ("url_rewrite", "urlRewrite"),
                  "RequestRedirect": ("request_redirect", "requestRedirect")}


class GatewayClassSpec(IstioModel):
    unsupported_fields = frozenset({"parametersRef", "description"})

    controller_name: str


class GatewayClass(Resource):
    group = GROUP
    versions = ("v1", "v1beta1")

    kind: Literal["GatewayClass"] = "GatewayClass"
    spec: GatewayClassSpec


# ---------------------------------------------------------------------------------------------
# Gateway (Gateway API's: the kind shares its name with Istio's ``Gateway``)
# ---------------------------------------------------------------------------------------------


class AllowedRoutes(IstioModel):
    unsupported_fields = frozenset({"kinds"})

    namespaces: dict[str, object] | None = None


class SecretObjectReference(IstioModel):
    """``listeners[].tls.certificateRefs[]``: a TLS Secret, in the Gateway's namespace by default."""

    unsupported_values = {"kind": frozenset({"ConfigMap"})}

    group: str | None = None
    kind: Literal["Secret"] | None = None
    name: str = Field(min_length=1)
    namespace: str | None = None


TERMINATE_MODE_OPTION = "gateway.istio.io/tls-terminate-mode"  # Istio's listener option


class GatewayTLSConfig(IstioModel):
    """A listener's TLS: ``Terminate`` with the certificate of ``certificateRefs``, or with Istio's option
    ``gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL`` the mesh's mutual TLS (the gateway's own
    workload certificate, the client's required: the hop from a sidecar to an egress gateway)."""

    unsupported_fields = frozenset({"frontendValidation"})

    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: list[SecretObjectReference] | None = None
    options: dict[str, str] | None = None

    @model_validator(mode="after")
    def _known_options(self) -> GatewayTLSConfig:
        for key, value in (self.options or {}).items():
            if key != TERMINATE_MODE_OPTION:
                raise ValueError(f"options.{key}: not supported by meshkit (only {TERMINATE_MODE_OPTION})")
            if value not in ("SIMPLE", "ISTIO_MUTUAL"):
                raise ValueError(f"options.{key}: {value!r} is not supported by meshkit "
                                 "(SIMPLE or ISTIO_MUTUAL)")
        return self

    @property
    def istio_mutual(self) -> bool:
        return (self.options or {}).get(TERMINATE_MODE_OPTION) == "ISTIO_MUTUAL"


class Listener(IstioModel):
    unsupported_values = {"protocol": frozenset({"TCP", "UDP", "GRPC"})}

    name: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    protocol: Literal["HTTP", "HTTPS", "TLS"]
    hostname: str | None = None
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes | None = None

    @model_validator(mode="after")
    def _https_terminates_tls(self) -> Listener:
        # Gateway API: an HTTPS listener needs tls with at least one certificateRef (Terminate)
        if self.protocol == "HTTPS" and self.tls is not None and self.tls.mode == "Passthrough":
            raise ValueError("an HTTPS listener terminates TLS: tls.mode Passthrough is for a listener of "
                             "protocol TLS")
        if self.protocol == "HTTPS" and self.tls is not None and self.tls.istio_mutual:
            if self.tls.certificate_refs:  # Istio: the gateway's own certificate, no Secret
                raise ValueError("tls.options gateway.istio.io/tls-terminate-mode ISTIO_MUTUAL cannot have "
                                 "certificateRefs")
        elif self.protocol == "HTTPS" and (self.tls is None or not self.tls.certificate_refs):
            raise ValueError("an HTTPS listener needs tls.certificateRefs (a TLS Secret)")
        # a TLS listener carries the client's TLS unopened (TLSRoutes by SNI); meshkit does not terminate it
        if self.protocol == "TLS" and (self.tls is None or self.tls.mode != "Passthrough"):
            raise ValueError("a TLS listener needs tls.mode Passthrough in meshkit (a TLS listener that "
                             "terminates TLS routes TCP, which meshkit does not model)")
        return self


SERVICE_TYPE_ANNOTATION = "networking.istio.io/service-type"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"  # on the pods of a Gateway's deployment


class KubeGatewaySpec(IstioModel):
    unsupported_fields = frozenset({"addresses", "infrastructure", "backendTLS"})

    gateway_class_name: str = Field(min_length=1)
    listeners: list[Listener] = Field(min_length=1)


class KubeGateway(Resource):
    """Gateway API's ``Gateway``. Its store key is ``Gateway.gateway.networking.k8s.io`` (kubectl's full
    name) so that it and Istio's ``Gateway`` of the same name (Bookinfo names both
    ``bookinfo-gateway``) live side by side, as on a cluster."""

    group = GROUP
    versions = ("v1", "v1beta1")
    store_kind: ClassVar[str] = f"Gateway.{GROUP}"

    kind: Literal["Gateway"] = "Gateway"
    spec: KubeGatewaySpec

    @model_validator(mode="after")
    def _served_listeners(self) -> KubeGateway:
        """What the local mesh serves: TLS Passthrough on any Gateway (on the ingress's HTTPS port, routed by
        SNI, for a Gateway without its own proxy), HTTPS (terminated) on the ingress only, the mesh's mutual
        TLS (``gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL``) on a Gateway with its own proxy only;
        anything else is refused by name, not silently dropped."""
        for index, listener in enumerate(self.spec.listeners):
            mutual = listener.tls is not None and listener.tls.istio_mutual
            if mutual and not self.deployed:
                raise ValueError(
                    f"spec.listeners[{index}]: an ISTIO_MUTUAL listener is served only by a Gateway with its "
                    f"own gateway proxy on the local mesh (annotation {SERVICE_TYPE_ANNOTATION}: ClusterIP)")
            if listener.protocol == "HTTPS" and self.deployed and not mutual:
                raise ValueError(
                    f"spec.listeners[{index}]: an HTTPS listener is served only by the local mesh's ingress "
                    f"(a Gateway without the annotation {SERVICE_TYPE_ANNOTATION}: ClusterIP)")
        return self

    @property
    def deployed(self) -> bool:
        """Whether the Gateway runs its own gateway proxy ``<name>-istio`` (Istio gives every Gateway one;
        the local mesh does so for the ClusterIP ones, egress and internal gateways, and serves the
        others, which Istio would expose through a LoadBalancer, on its one ingress)."""
        annotations = self.metadata.annotations or {}
        return (self.spec.gateway_class_name == "istio"
                and annotations.get(SERVICE_TYPE_ANNOTATION) == "ClusterIP")

    @property
    def deployment_name(self) -> str:
        """Istio's name of the Gateway's Deployment, Service and ServiceAccount: ``<name>-istio``."""
        return f"{self.metadata.name}-istio"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.store_kind, self.metadata.namespace, self.metadata.name)

    @property
    def ref(self) -> str:
        return f"{self.store_kind}/{self.metadata.namespace}/{self.metadata.name}"


# ---------------------------------------------------------------------------------------------
# HTTPRoute
# ---------------------------------------------------------------------------------------------


class ParentReference(IstioModel):
    group: str | None = None
    kind: str | None = None  # Gateway when unset
    namespace: str | None = None
    name: str = Field(min_length=1)
    section_name: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def is_service(self) -> bool:
        return self.kind == "Service" and (self.group or "") == ""

    @property
    def is_service_entry(self) -> bool:
        return self.kind == "ServiceEntry" and self.group == ISTIO_NETWORKING


class HTTPPathMatch(IstioModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"


class HTTPHeaderMatch(IstioModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1)
    value: str


Method = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


class HTTPRouteMatch(IstioModel):
    path: HTTPPathMatch | None = None
    headers: list[HTTPHeaderMatch] | None = None
    query_params: list[HTTPHeaderMatch] | None = None
    method: Method | None = None


class HTTPHeader(IstioModel):
    name: str = Field(min_length=1)
    value: str


class HTTPHeaderFilter(IstioModel):
    set: list[HTTPHeader] | None = None
    add: list[HTTPHeader] | None = None
    remove: list[str] | None = None


class BackendObjectReference(IstioModel):
    group: str | None = None
    kind: Literal["Service"] = "Service"
    name: str = Field(min_length=1)
    namespace: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class HTTPRequestMirrorFilter(IstioModel):
    unsupported_fields = frozenset({"fraction"})

    backend_ref: BackendObjectReference
    percent: int | None = Field(default=None, ge=0, le=100)


class HTTPPathModifier(IstioModel):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None

    @model_validator(mode="after")
    def _value_of_type(self) -> HTTPPathModifier:
        wanted, other = (("replaceFullPath", "replacePrefixMatch") if self.type == "ReplaceFullPath"
                         else ("replacePrefixMatch", "replaceFullPath"))
        values = {"replaceFullPath": self.replace_full_path, "replacePrefixMatch": self.replace_prefix_match}
        if values[wanted] is None:
            raise ValueError(f"path type {self.type} needs {wanted}")
        if values[other] is not None:
            raise ValueError(f"path type {self.type} must not set {other}")
        if not values[wanted].startswith("/"):  # type: ignore[union-attr]
            raise ValueError(f"{wanted}: expected a path starting with '/', got {values[wanted]!r}")
        return self


class HTTPRequestRedirectFilter(IstioModel):
    """Answered by the proxy with a 3xx and a Location (Istio: a VirtualService ``redirect``)."""

    scheme: Literal["http", "https"] | None = None
    hostname: str | None = Field(default=None, min_length=1)
    path: HTTPPathModifier | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    status_code: Literal[301, 302] = 302  # Gateway API's default (a VirtualService's is 301)


class HTTPURLRewriteFilter(IstioModel):
    hostname: str | None = Field(default=None, min_length=1)
    path: HTTPPathModifier | None = None


class HTTPRouteFilter(IstioModel):
    # the sidecar has no CORS filter and no extensions
    unsupported_fields = frozenset({"extensionRef", "cors"})

    type: str
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None

    @model_validator(mode="after")
    def _known_type(self) -> HTTPRouteFilter:
        if self.type not in FILTER_TYPES:
            hint = ""
            if any(word in self.type.lower() for word in _FAULT_WORDS):
                hint = ("; Gateway API has no fault injection: use a VirtualService's http[].fault "
                        "(networking.istio.io) for delays and aborts")
            raise ValueError(f'filter type "{self.type}" does not exist in Gateway API '
                             f"(types: {', '.join(FILTER_TYPES)}){hint}")
        if self.type not in SUPPORTED_FILTERS:
            raise ValueError(f'filter type "{self.type}" is not supported by meshkit '
                             f"(supported: {', '.join(SUPPORTED_FILTERS)})")
        field, alias = _FILTER_FIELDS[self.type]
        if getattr(self, field) is None:
            raise ValueError(f'filter type {self.type} needs its "{alias}" field')
        return self


class HTTPBackendRef(IstioModel):
    """A route's backend: a Service, or (kind Hostname, group networking.istio.io: Istio's extension) an
    external host, which a ServiceEntry declares."""

    unsupported_fields = frozenset({"filters"})

    group: str | None = None
    kind: Literal["Service", "Hostname"] = "Service"
    name: str = Field(min_length=1)
    namespace: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    weight: int = Field(default=1, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _hostname_group(self) -> HTTPBackendRef:
        if self.kind == "Hostname" and (self.group != ISTIO_NETWORKING or self.port is None):
            raise ValueError(f"a backendRef of kind Hostname needs group {ISTIO_NETWORKING} and a port")
        return self

    @property
    def is_hostname(self) -> bool:
        return self.kind == "Hostname"


class HTTPRouteTimeouts(IstioModel):
    request: DurationStr | None = None
    backend_request: DurationStr | None = None


class HTTPRouteRule(IstioModel):
    unsupported_fields = frozenset({"retry", "sessionPersistence"})

    name: str | None = None
    matches: list[HTTPRouteMatch] | None = None
    filters: list[HTTPRouteFilter] | None = None
    backend_refs: list[HTTPBackendRef] | None = None
    timeouts: HTTPRouteTimeouts | None = None

    @model_validator(mode="after")
    def _redirect_rules(self) -> HTTPRouteRule:
        """Gateway API's CRD rules: a redirect and a rewrite are exclusive, and ReplacePrefixMatch (in a
        redirect or a rewrite) needs exactly one match, of type PathPrefix."""
        types = [f.type for f in self.filters or []]
        if "RequestRedirect" in types and "URLRewrite" in types:
            raise ValueError("a rule may have a RequestRedirect or a URLRewrite filter, not both")
        for item in self.filters or []:
            path = (item.request_redirect.path if item.request_redirect is not None else
                    item.url_rewrite.path if item.url_rewrite is not None else None)
            if path is not None and path.type == "ReplacePrefixMatch":
                # an absent match or path is Gateway API's default, PathPrefix "/"
                matches = self.matches or [HTTPRouteMatch()]
                path_match = matches[0].path
                if len(matches) != 1 or (path_match is not None and path_match.type != "PathPrefix"):
                    field = "requestRedirect" if item.request_redirect is not None else "urlRewrite"
                    raise ValueError(f"{field}.path ReplacePrefixMatch needs exactly one match "
                                     "with path type PathPrefix")
        return self


class HTTPRouteSpec(IstioModel):
    parent_refs: list[ParentReference] = Field(min_length=1)
    hostnames: list[str] | None = None
    rules: list[HTTPRouteRule] | None = None


class HTTPRoute(Resource):
    """Gateway API's HTTPRoute (``gateway.networking.k8s.io``), not a VirtualService's ``http`` entry."""

    group = GROUP
    versions = ("v1", "v1beta1")
    unsupported_fields = frozenset({"status"})

    kind: Literal["HTTPRoute"] = "HTTPRoute"
    spec: HTTPRouteSpec


# ---------------------------------------------------------------------------------------------
# TLSRoute (v1alpha2, the experimental channel): the SNI of TLS passed through
# ---------------------------------------------------------------------------------------------


class TLSRouteRule(IstioModel):
    name: str | None = None
    backend_refs: list[HTTPBackendRef] = Field(min_length=1)


class TLSRouteSpec(IstioModel):
    parent_refs: list[ParentReference] = Field(min_length=1)
    hostnames: list[str] | None = None
    rules: list[TLSRouteRule] = Field(min_length=1)


class KubeTLSRoute(Resource):
    """Gateway API's TLSRoute, not a VirtualService's ``tls`` entry (`meshkit.config.resources.TLSRoute`)."""

    group = GROUP
    versions = ("v1alpha2", "v1alpha3")
    unsupported_fields = frozenset({"status"})

    kind: Literal["TLSRoute"] = "TLSRoute"
    spec: TLSRouteSpec


GATEWAY_API_KINDS: dict[str, type[Resource]] = {"GatewayClass": GatewayClass, "HTTPRoute": HTTPRoute,
                                                "TLSRoute": KubeTLSRoute}
# kinds whose name an Istio kind already has: the loader picks them by apiVersion group
SAME_NAME_KINDS: dict[tuple[str, str], type[Resource]] = {("Gateway", GROUP): KubeGateway}
