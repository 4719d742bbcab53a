"""VirtualService (``networking.istio.io`` v1/v1beta1/v1alpha3): the models, with Istio's field names.

HTTP routes (matches, destinations and weights, rewrites, redirects, retries, timeouts, faults,
mirroring, header operations, delegates), TLS routes by SNI and TCP routes, and the kind itself.
`PortSelector`/`Destination` are shared with the DestinationRule models (as in Istio's API).

Validation is per resource and structural; it must not check ranges across resources (that is
`analyze`), compile routes (`compile`) or import any meshkit module but `resource_base`.
Importers use `meshkit.config.resources`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from meshkit.config.resource_base import DurationStr, IstioModel, Resource


class StringMatch(IstioModel):
    """Exactly one of ``exact``, ``prefix``, ``regex`` (RE2 syntax in Istio; Python ``re`` here)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StringMatch:
        given = [name for name in ("exact", "prefix", "regex") if getattr(self, name) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            raise ValueError(f"exactly one of exact, prefix, regex must be set (got {got})")
        return self

    @property
    def kind_and_value(self) -> tuple[str, str]:
        for name in ("exact", "prefix", "regex"):
            value = getattr(self, name)
            if value is not None:
                return name, value
        raise AssertionError("validated StringMatch has one value")


class HTTPMatchRequest(IstioModel):
    unsupported_fields = frozenset({"scheme", "sourceNamespace", "statPrefix"})

    name: str | None = None
    # Istio: the destination port the request is for (a sidecar: the Host's port, 80 when none; a
    # gateway: the port of its Gateway server), and the gateways this match is for (``mesh`` = sidecars;
    # given, it replaces the VirtualService's own ``gateways`` for this match).
    port: int | None = Field(default=None, ge=1, le=65535)
    gateways: list[str] | None = None
    uri: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] | None = None
    query_params: dict[str, StringMatch] | None = None
    without_headers: dict[str, StringMatch] | None = None
    source_labels: dict[str, str] | None = None
    ignore_uri_case: bool | None = None


class PortSelector(IstioModel):
    number: int


class Destination(IstioModel):
    host: str
    subset: str | None = None
    port: PortSelector | None = None


class HeaderOperations(IstioModel):
    set: dict[str, str] | None = None
    add: dict[str, str] | None = None
    remove: list[str] | None = None


class Headers(IstioModel):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPRouteDestination(IstioModel):
    destination: Destination
    weight: int | None = None
    headers: Headers | None = None


class Percent(IstioModel):
    value: float


class HTTPFaultInjectionDelay(IstioModel):
    unsupported_fields = frozenset({"exponentialDelay"})

    fixed_delay: DurationStr
    percentage: Percent | None = None
    percent: int | None = None  # deprecated integer form still used in tutorials


class HTTPFaultInjectionAbort(IstioModel):
    unsupported_fields = frozenset({"grpcStatus", "http2Error"})

    http_status: int
    percentage: Percent | None = None


class HTTPFaultInjection(IstioModel):
    delay: HTTPFaultInjectionDelay | None = None
    abort: HTTPFaultInjectionAbort | None = None


class RegexRewrite(IstioModel):
    match: str = Field(min_length=1)
    rewrite: str


class HTTPRewrite(IstioModel):
    uri: str | None = None
    authority: str | None = Field(default=None, min_length=1)
    uri_regex_rewrite: RegexRewrite | None = None

    @model_validator(mode="after")
    def _uri_or_regex(self) -> HTTPRewrite:
        if self.uri is not None and self.uri_regex_rewrite is not None:
            raise ValueError("rewrite: uri and uriRegexRewrite are exclusive")
        if self.uri_regex_rewrite is not None:
            try:
                re.compile(self.uri_regex_rewrite.match).sub(self.uri_regex_rewrite.rewrite, "/")
            except (re.error, IndexError) as exc:
                raise ValueError(f"rewrite.uriRegexRewrite: {exc}") from None
        return self


REDIRECT_CODES = (301, 302, 303, 307, 308)  # what Istio translates (Envoy's RedirectResponseCode)
# Istio: a redirect ``uri`` starting with this replaces only the matched prefix, in an HTTPRoute's
# internal VirtualService (Gateway API ReplacePrefixMatch); elsewhere it is a literal path
PREFIX_MARK = "%PREFIX()%"


class HTTPRedirect(IstioModel):
    """A redirect answered by the proxy (Envoy's RedirectAction): ``uri`` replaces the whole path."""

    uri: str | None = None
    authority: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: Literal["http", "https"] | None = None
    redirect_code: int | None = None

    @model_validator(mode="after")
    def _checked(self) -> HTTPRedirect:
        if self.uri is None and self.authority is None and self.port is None and self.derive_port is None \
                and self.scheme is None:
            raise ValueError("redirect must specify uri, authority, scheme, port or derivePort")
        if self.port is not None and self.derive_port is not None:
            raise ValueError("redirect: port and derivePort are exclusive")
        if self.uri is not None and not self.uri.startswith("/"):
            raise ValueError(f"redirect.uri: expected a path starting with '/', got {self.uri!r}")
        if self.redirect_code is not None and self.redirect_code not in REDIRECT_CODES:
            raise ValueError(f"redirect.redirectCode {self.redirect_code} is not supported "
                             f"(Istio translates {', '.join(map(str, REDIRECT_CODES))})")
        return self


class HTTPRetry(IstioModel):
    unsupported_fields = frozenset({"retryRemoteLocalities", "retryIgnorePreviousHosts", "backoff"})

    attempts: int
    per_try_timeout: DurationStr | None = None
    retry_on: str | None = None

    @property
    def retry_on_list(self) -> list[str]:
        if self.retry_on is None:
            return []
        return [part.strip() for part in self.retry_on.split(",") if part.strip()]


class Delegate(IstioModel):
    """``http[].delegate``: the rule's requests are routed by the rules of another VirtualService (one
    without hosts), in ``namespace`` (default: this VirtualService's). `meshkit.config.delegates`."""

    name: str = Field(min_length=1)
    namespace: str | None = None


class HTTPRoute(IstioModel):
    unsupported_fields = frozenset(
        {"directResponse", "mirrors", "corsPolicy"}
    )

    name: str | None = None
    match: list[HTTPMatchRequest] | None = None
    route: list[HTTPRouteDestination] | None = None
    rewrite: HTTPRewrite | None = None
    timeout: DurationStr | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirror_percentage: Percent | None = None
    mirror_percent: int | None = None  # deprecated integer form
    headers: Headers | None = None
    redirect: HTTPRedirect | None = None
    delegate: Delegate | None = None

    @model_validator(mode="after")
    def _redirect_alone(self) -> HTTPRoute:
        # Istio's validation: a redirect replaces the route (and a rewrite makes no sense with it)
        if self.redirect is not None:
            for name, value in (("route", self.route), ("rewrite", self.rewrite)):
                if value:
                    raise ValueError(f"an http route cannot have both redirect and {name}")
        return self


class TLSMatchAttributes(IstioModel):
    """A ``tls`` route's match: the SNI the client's ClientHello names, and port/gateways/source."""

    unsupported_fields = frozenset({"destinationSubnets", "sourceNamespace"})

    sni_hosts: list[str] = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    gateways: list[str] | None = None
    source_labels: dict[str, str] | None = None


class RouteDestination(IstioModel):
    destination: Destination
    weight: int | None = Field(default=None, ge=0)


class TLSRoute(IstioModel):
    """Non-terminated TLS (HTTPS passed through), routed by SNI (proxy/tunnel.py carries it)."""

    match: list[TLSMatchAttributes] = Field(min_length=1)
    route: list[RouteDestination] = Field(min_length=1)


class L4MatchAttributes(IstioModel):
    """A ``tcp`` route's match: the port (a gateway's TCP server port), gateways, source labels."""

    unsupported_fields = frozenset({"destinationSubnets", "sourceNamespace", "sourceSubnet"})

    port: int | None = Field(default=None, ge=1, le=65535)
    gateways: list[str] | None = None
    source_labels: dict[str, str] | None = None


class TCPRoute(IstioModel):
    """Opaque TCP, routed by port with weights (config.tls_routes compiles it; proxy/tunnel.py carries it)."""

    match: list[L4MatchAttributes] | None = None
    route: list[RouteDestination] = Field(min_length=1)


class VirtualServiceSpec(IstioModel):

    # no hosts: a delegate, used only through the ``delegate`` of a root VirtualService
    hosts: list[str] = Field(default_factory=list)
    gateways: list[str] | None = None
    http: list[HTTPRoute] | None = None
    tls: list[TLSRoute] | None = None
    tcp: list[TCPRoute] | None = None
    export_to: list[str] | None = None  # "." own namespace, "*" all (absent), names, "~" none


class VirtualService(Resource):
    group = "networking.istio.io"
    versions = ("v1", "v1beta1", "v1alpha3")

    kind: Literal["VirtualService"] = "VirtualService"
    spec: VirtualServiceSpec
