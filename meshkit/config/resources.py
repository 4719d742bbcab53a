"""Typed models of the Istio API subset meshkit implements.

VirtualService and DestinationRule (``networking.istio.io``), PeerAuthentication and
AuthorizationPolicy (``security.istio.io``) and Telemetry's tracing part (``telemetry.istio.io``),
with Istio's own camelCase field names.
Every model forbids extra fields; each one lists the real Istio fields it does *not*
implement in ``unsupported_fields`` (and enum values in ``unsupported_values``) so the
loader can say "is not supported by meshkit" instead of "unknown field".

Validation here is per resource and structural (types, required fields, one-of).
Range and cross-resource checks live in `analyze`; turning these into the proxy
snapshot lives in `compile`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# ---------------------------------------------------------------------------------------------
# Durations ("7s", "500ms", "1m30s", "1.5s") exposed as milliseconds
# ---------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_MS = {"h": 3_600_000.0, "m": 60_000.0, "s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001, "ns": 1e-6}


class Duration(str):
    """A duration written as Istio writes it (Go syntax); ``.ms`` is the value in milliseconds."""

    __slots__ = ()

    @property
    def ms(self) -> int:
        return parse_duration_ms(self)


def parse_duration_ms(text: str) -> int:
    """``"1.5s"`` -> 1500. Raises ValueError with the accepted syntax on anything else."""
    value = text.strip()
    total = 0.0
    position = 0
    for part in _DURATION_PART.finditer(value):
        if part.start() != position:
            break
        total += float(part.group(1)) * _UNIT_MS[part.group(2)]
        position = part.end()
    if not value or position != len(value):
        raise ValueError(f'invalid duration "{text}" (expected e.g. "7s", "500ms", "1.5s", "1m", "1h")')
    return round(total)


def _to_duration(value: str) -> Duration:
    parse_duration_ms(value)
    return Duration(value)


DurationStr = Annotated[str, AfterValidator(_to_duration)]


# ---------------------------------------------------------------------------------------------
# Base
# ---------------------------------------------------------------------------------------------


class IstioModel(BaseModel):
    """Base of every spec model: camelCase aliases, extra fields forbidden."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    # real Istio fields (by their YAML name) that meshkit does not implement
    unsupported_fields: ClassVar[frozenset[str]] = frozenset()
    # field alias -> Istio enum values meshkit does not implement
    unsupported_values: ClassVar[dict[str, frozenset[str]]] = {}


# ---------------------------------------------------------------------------------------------
# VirtualService
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# DestinationRule
# ---------------------------------------------------------------------------------------------

LoadBalancerPolicy = Literal[
    "UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", "PASSTHROUGH"
]


class LoadBalancerSettings(IstioModel):
    unsupported_fields = frozenset({"consistentHash", "localityLbSetting", "warmupDurationSecs", "warmup"})

    simple: LoadBalancerPolicy | None = None


class TCPSettings(IstioModel):
    unsupported_fields = frozenset({"tcpKeepalive", "maxConnectionDuration", "idleTimeout"})

    max_connections: int | None = None
    connect_timeout: DurationStr | None = None


class HTTPSettings(IstioModel):
    unsupported_fields = frozenset(
        {"idleTimeout", "h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams"}
    )

    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None


class ConnectionPoolSettings(IstioModel):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(IstioModel):
    unsupported_fields = frozenset(
        {"consecutiveErrors", "splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures",
         "minHealthPercent"}
    )

    consecutive_5xx_errors: int | None = Field(default=None, alias="consecutive5xxErrors")
    consecutive_gateway_errors: int | None = None
    interval: DurationStr | None = None
    base_ejection_time: DurationStr | None = None
    max_ejection_percent: int | None = None


class ClientTLSSettings(IstioModel):
    """``SIMPLE`` originates TLS (the server's certificate checked against the stand-in CA, or the
    system's CAs with real DNS, or the file ``caCertificates``, and its name against
    ``sni``/``subjectAltNames``). ``MUTUAL`` also presents the client certificate of the Secret
    ``credentialName`` (``tls.crt``/``tls.key``, its ``ca.crt`` checking the server), looked up in the
    client proxy's namespace as Istio 1.20+ does for sidecars (``istio-system`` for the gateways), or of
    the files ``clientCertificate``/``privateKey``: paths in the proxy's container, which on the local
    mesh are the Secret volumes its pod's ``sidecar.istio.io/userVolume`` annotations mount
    (`meshkit.config.user_volumes`)."""

    unsupported_fields = frozenset({"caCrl"})

    mode: Literal["DISABLE", "ISTIO_MUTUAL", "SIMPLE", "MUTUAL"]
    credential_name: str | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    sni: str | None = None
    subject_alt_names: list[str] | None = None
    insecure_skip_verify: bool | None = None

    @model_validator(mode="after")
    def _mutual_has_a_credential(self) -> ClientTLSSettings:
        if self.mode == "MUTUAL" and not self.credential_name and not (self.client_certificate
                                                                       and self.private_key):
            raise ValueError("mode MUTUAL needs credentialName (a Secret with tls.crt, tls.key and ca.crt "
                             "in the client's namespace) or clientCertificate and privateKey (files of a "
                             "Secret volume the pod's sidecar.istio.io/userVolume annotations mount)")
        return self


class PortTrafficPolicy(IstioModel):
    """``portLevelSettings[]``: these settings replace the DestinationRule's for one port."""

    port: PortSelector
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(IstioModel):
    unsupported_fields = frozenset({"tunnel", "proxyProtocol", "retryBudget"})

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] | None = None

    def for_port(self, port: int) -> TrafficPolicy:
        """The policy for one port: each setting of a matching ``portLevelSettings`` entry replaces
        the top-level one (Istio's merge)."""
        for level in self.port_level_settings or []:
            if level.port.number == port:
                overrides = {name: getattr(level, name) for name in type(level).model_fields
                             if name != "port" and getattr(level, name) is not None}
                return self.model_copy(update=overrides)
        return self


class Subset(IstioModel):
    name: str
    labels: dict[str, str] | None = None
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(IstioModel):
    host: str
    # only the workloads of the rule's namespace with these labels use it (Istio 1.17+; wins over a rule
    # without a selector in the same namespace)
    workload_selector: WorkloadSelector | None = None
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] | None = None
    export_to: list[str] | None = None  # as VirtualServiceSpec.export_to


# ---------------------------------------------------------------------------------------------
# PeerAuthentication and AuthorizationPolicy
# ---------------------------------------------------------------------------------------------


class WorkloadSelector(IstioModel):
    match_labels: dict[str, str] | None = None


class MutualTLS(IstioModel):
    mode: Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"] = "UNSET"


class PeerAuthenticationSpec(IstioModel):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: dict[int, MutualTLS] | None = None


class Source(IstioModel):
    unsupported_fields = frozenset({"serviceAccounts", "notServiceAccounts"})

    principals: list[str] | None = None
    not_principals: list[str] | None = None
    namespaces: list[str] | None = None
    not_namespaces: list[str] | None = None
    ip_blocks: list[str] | None = None
    not_ip_blocks: list[str] | None = None
    remote_ip_blocks: list[str] | None = None
    not_remote_ip_blocks: list[str] | None = None
    # the request principal ``<iss>/<sub>`` of a token a RequestAuthentication verified (config/authn.py)
    request_principals: list[str] | None = None
    not_request_principals: list[str] | None = None


def _port_string(value: str) -> str:
    """Istio writes ports as strings ("8000"); a YAML integer is accepted and kept as its string."""
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f'port "{value}" is not a number between 1 and 65535')
    return value


def _int_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


PortString = Annotated[str, BeforeValidator(_int_to_str), AfterValidator(_port_string)]


class Operation(IstioModel):
    hosts: list[str] | None = None
    not_hosts: list[str] | None = None
    methods: list[str] | None = None
    not_methods: list[str] | None = None
    paths: list[str] | None = None
    not_paths: list[str] | None = None
    ports: list[PortString] | None = None
    not_ports: list[PortString] | None = None


class RuleFrom(IstioModel):
    source: Source


class RuleTo(IstioModel):
    operation: Operation


class Condition(IstioModel):
    key: str
    values: list[str] | None = None
    not_values: list[str] | None = None


class Rule(IstioModel):
    from_: list[RuleFrom] | None = Field(default=None, alias="from")
    to: list[RuleTo] | None = None
    when: list[Condition] | None = None


class AuthorizationPolicySpec(IstioModel):
    unsupported_fields = frozenset({"provider", "targetRef", "targetRefs"})
    unsupported_values = {"action": frozenset({"CUSTOM"})}

    selector: WorkloadSelector | None = None
    action: Literal["ALLOW", "DENY", "AUDIT"] | None = None
    rules: list[Rule] | None = None

    @property
    def effective_action(self) -> str:
        return self.action or "ALLOW"


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


class ObjectMeta(IstioModel):
    unsupported_fields = frozenset(
        {"uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp", "managedFields",
         "generateName", "finalizers", "ownerReferences", "selfLink", "deletionGracePeriodSeconds"}
    )

    name: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


_DUMP: dict[str, Any] = {"mode": "json", "by_alias": True, "exclude_none": True}  # to_dict's settings
DUMP_SPLIT_ABOVE = 64  # models in a spec list above which `Resource.to_dict` dumps them one by one


class Resource(IstioModel):
    """Common envelope: ``apiVersion``, ``kind``, ``metadata``, ``spec``."""

    unsupported_fields = frozenset({"status"})
    group: ClassVar[str]
    versions: ClassVar[tuple[str, ...]]

    # empty: the first accepted version (handy when a resource is built in Python)
    api_version: str = Field(default="", validate_default=True)
    kind: str
    metadata: ObjectMeta
    spec: Any

    @classmethod
    def accepted_api_versions(cls) -> list[str]:
        return [f"{cls.group}/{version}" for version in cls.versions]

    @field_validator("api_version")
    @classmethod
    def _accepted_api_version(cls, value: str) -> str:
        accepted = cls.accepted_api_versions()
        if not value:
            return accepted[0]
        if value not in accepted:
            listed = ", ".join(accepted)
            raise ValueError(f'"{value}" is not accepted for kind {cls.__name__} (accepted: {listed})')
        return value

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.metadata.namespace}/{self.metadata.name}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.metadata.namespace, self.metadata.name)

    def to_dict(self) -> dict[str, Any]:
        """The Istio-shaped document (camelCase, unset fields omitted); ``load_resources`` accepts it.

        A ``spec`` list of more than `DUMP_SPLIT_ABOVE` models (a large VirtualService's ``http``)
        is dumped one member at a time: one ``model_dump`` call holds the GIL until it returns
        (25-60 ms for a 1 MB VirtualService, the event loop of the control plane waiting when the
        change is prepared on its thread). Same dict, same key order (tests check)."""
        spec = self.spec
        if not isinstance(spec, BaseModel):
            return self.model_dump(**_DUMP)
        fields = type(spec).model_fields
        long = {name for name in fields if isinstance(value := getattr(spec, name), list)
                and len(value) > DUMP_SPLIT_ABOVE and all(isinstance(item, BaseModel) for item in value)}
        if not long:
            return self.model_dump(**_DUMP)
        doc = self.model_dump(**_DUMP, exclude={"spec": long})
        rest = doc["spec"]
        spec_doc: dict[str, Any] = {}
        for name, info in fields.items():
            alias = info.serialization_alias or info.alias or name
            if name in long:
                spec_doc[alias] = [item.model_dump(**_DUMP) for item in getattr(spec, name)]
            elif alias in rest:
                spec_doc[alias] = rest[alias]
        doc["spec"] = spec_doc
        return doc


class VirtualService(Resource):
    group = "networking.istio.io"
    versions = ("v1", "v1beta1", "v1alpha3")

    kind: Literal["VirtualService"] = "VirtualService"
    spec: VirtualServiceSpec


class DestinationRule(Resource):
    group = "networking.istio.io"
    versions = ("v1", "v1beta1", "v1alpha3")

    kind: Literal["DestinationRule"] = "DestinationRule"
    spec: DestinationRuleSpec


class PeerAuthentication(Resource):
    group = "security.istio.io"
    versions = ("v1", "v1beta1")

    kind: Literal["PeerAuthentication"] = "PeerAuthentication"
    spec: PeerAuthenticationSpec = PeerAuthenticationSpec()


class AuthorizationPolicy(Resource):
    group = "security.istio.io"
    versions = ("v1", "v1beta1")

    kind: Literal["AuthorizationPolicy"] = "AuthorizationPolicy"
    spec: AuthorizationPolicySpec = AuthorizationPolicySpec()


class TracingProvider(IstioModel):
    name: str = Field(min_length=1)  # any name: every span goes to the control plane's collector


class Tracing(IstioModel):
    unsupported_fields = frozenset({"match", "customTags", "useRequestIdForTraceSampling", "enableIstioTags"})

    providers: list[TracingProvider] | None = None
    random_sampling_percentage: float | None = Field(default=None, ge=0.0, le=100.0)
    disable_span_reporting: bool | None = None


class TelemetrySpec(IstioModel):
    unsupported_fields = frozenset({"metrics", "accessLogging", "targetRef", "targetRefs"})

    selector: WorkloadSelector | None = None
    tracing: list[Tracing] | None = None


class Telemetry(Resource):
    group = "telemetry.istio.io"
    versions = ("v1", "v1alpha1")

    kind: Literal["Telemetry"] = "Telemetry"
    spec: TelemetrySpec = TelemetrySpec()
