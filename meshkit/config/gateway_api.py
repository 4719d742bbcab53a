"""The Kubernetes Gateway API kinds meshkit reads (``gateway.networking.k8s.io/v1``): models only.

``GatewayClass`` (the ``istio`` class), ``Gateway`` (HTTP listeners; `KubeGateway`, as its name is
Istio's ``Gateway`` too) and ``HTTPRoute``. An HTTPRoute attaches to a Service
(``parentRefs`` kind Service: mesh traffic, the GAMMA pattern) or to a Gateway (ingress). Every
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


class GatewayTLSConfig(IstioModel):
    unsupported_fields = frozenset({"frontendValidation", "options"})
    unsupported_values = {"mode": frozenset({"Passthrough"})}

    mode: Literal["Terminate"] = "Terminate"
    certificate_refs: list[SecretObjectReference] | None = None


class Listener(IstioModel):
    unsupported_values = {"protocol": frozenset({"TLS", "TCP", "UDP", "GRPC"})}

    name: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    protocol: Literal["HTTP", "HTTPS"]
    hostname: str | None = None
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes | None = None

    @model_validator(mode="after")
    def _https_terminates_tls(self) -> Listener:
        # Gateway API: an HTTPS listener needs tls with at least one certificateRef (Terminate)
        if self.protocol == "HTTPS" and (self.tls is None or not self.tls.certificate_refs):
            raise ValueError("an HTTPS listener needs tls.certificateRefs (a TLS Secret)")
        return self


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
    unsupported_fields = frozenset({"filters"})

    group: str | None = None
    kind: Literal["Service"] = "Service"
    name: str = Field(min_length=1)
    namespace: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    weight: int = Field(default=1, ge=0, le=1_000_000)


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


GATEWAY_API_KINDS: dict[str, type[Resource]] = {"GatewayClass": GatewayClass, "HTTPRoute": HTTPRoute}
# kinds whose name an Istio kind already has: the loader picks them by apiVersion group
SAME_NAME_KINDS: dict[tuple[str, str], type[Resource]] = {("Gateway", GROUP): KubeGateway}
