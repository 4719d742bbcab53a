"""The snapshot JSON (docs/snapshot.md) as types: the one definition of its fields.

The compiler (``meshkit.config.compile``) writes these documents, the sidecar reads them
(``proxy.snapshot`` and the modules it calls validate every value and NACK what is wrong), and
docs/snapshot.md explains them. The sidecar cannot import config, so this module is the definition
and ``tests/config/test_snapshot_schema.py`` checks the other two against it: every snapshot the
compiler produces for the Istio samples has exactly these fields and passes the sidecar's
validation, and docs/snapshot.md names exactly these fields.

Types only: nothing here runs per request or validates anything (``TypedDict`` is a plain dict at
run time). Maps keyed by data (cluster names, labels, header names) are ``dict[str, ...]``.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

SCHEMA = 1

LbPolicy = Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "PASSTHROUGH"]
TlsMode = Literal["DISABLE", "ISTIO_MUTUAL", "SIMPLE", "MUTUAL"]
ProxyKind = Literal["sidecar", "gateway"]


class NodeDoc(TypedDict):
    id: str
    workload: str | None
    instance: str
    namespace: str
    service: str | None
    version: str | None
    labels: dict[str, str]
    identity: str | None
    kind: ProxyKind


class StringMatchDoc(TypedDict, total=False):
    exact: str
    prefix: str  # a string prefix (a VirtualService's): "/api" matches "/apix" too
    path_separated_prefix: str  # uri only: whole path segments (a Gateway API PathPrefix, Envoy's)
    regex: str


class MatchDoc(TypedDict, total=False):
    uri: StringMatchDoc
    method: StringMatchDoc
    authority: StringMatchDoc
    headers: dict[str, StringMatchDoc]
    without_headers: dict[str, StringMatchDoc]
    query_params: dict[str, StringMatchDoc]
    ignore_uri_case: bool
    port: int  # the request's destination port: the Host's port, 80 when it names none (a sidecar's)


class HeaderOpsDoc(TypedDict):
    set: dict[str, str]
    add: dict[str, str]
    remove: list[str]


class HeadersDoc(TypedDict):
    request: HeaderOpsDoc
    response: HeaderOpsDoc


class WeightedClusterDoc(TypedDict):
    cluster: str
    weight: int
    headers: HeadersDoc | None


class RegexRewriteDoc(TypedDict):
    match: str
    rewrite: str


class RewriteDoc(TypedDict):
    uri: str | None  # replaces the matched prefix, or the whole path
    authority: str | None  # replaces the Host header
    uri_regex: RegexRewriteDoc | None  # every match in the path replaced (Envoy's regex_rewrite)


class DelayDoc(TypedDict):
    fixed_delay_ms: int
    percent: float


class AbortDoc(TypedDict):
    http_status: int
    percent: float


class FaultDoc(TypedDict):
    delay: DelayDoc | None
    abort: AbortDoc | None


class MirrorDoc(TypedDict):
    cluster: str
    percent: float


class RetriesDoc(TypedDict):
    attempts: int
    per_try_timeout_ms: int | None
    retry_on: list[str]
    retriable_status_codes: list[int]


class RedirectDoc(TypedDict):
    """A VirtualService ``redirect`` / HTTPRoute ``RequestRedirect`` (Envoy's RedirectAction)."""

    scheme: str | None
    host: str | None
    port: int | None
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None
    path: str | None  # replaces the whole path
    prefix_rewrite: str | None  # replaces the matched prefix
    response_code: int


class RouteDoc(TypedDict):
    name: str
    source: str
    match: list[MatchDoc]
    route: list[WeightedClusterDoc]
    headers: HeadersDoc | None
    rewrite: RewriteDoc | None
    redirect: RedirectDoc | None  # set: the proxy answers with a 3xx, ``route`` is []
    fault: FaultDoc | None
    mirror: MirrorDoc | None
    timeout_ms: int | None
    retries: RetriesDoc | None


class VirtualHostDoc(TypedDict):
    name: str
    service: str | None
    domains: list[str]
    port: int | None
    routes: list[RouteDoc]


class OutboundDoc(TypedDict):
    virtual_hosts: list[VirtualHostDoc]


class EndpointDoc(TypedDict):
    address: str
    port: int
    instance: str
    workload: str
    version: str | None
    labels: dict[str, str]
    identity: str | None
    has_sidecar: bool
    healthy: bool


class ConnectionPoolDoc(TypedDict):
    max_connections: int | None
    connect_timeout_ms: int | None
    http1_max_pending_requests: int | None
    max_requests: int | None
    max_requests_per_connection: int
    max_retries: int | None


class OutlierDetectionDoc(TypedDict):
    consecutive_5xx_errors: int
    consecutive_gateway_errors: int | None
    interval_ms: int
    base_ejection_time_ms: int
    max_ejection_percent: int


class _OriginationDoc(TypedDict, total=False):
    """SIMPLE only (TLS origination, proxy.tls.originate): the server name sent, the names the server's
    certificate may carry instead of it, and whether the certificate is checked at all."""

    sni: str
    subject_alt_names: list[str]
    insecure_skip_verify: bool
    # MUTUAL only: the client certificate of the DestinationRule's credentialName, and its ca.crt
    credential: str
    client_cert_pem: str | None
    client_key_pem: str | None
    ca_pem: str | None


class ClusterTlsDoc(_OriginationDoc):
    mode: TlsMode
    server_identities: list[str]


class ClusterDoc(TypedDict):
    service: str
    namespace: str | None
    subset: str
    port: int
    lb: LbPolicy
    endpoints: list[EndpointDoc]
    connection_pool: NotRequired[ConnectionPoolDoc | None]
    outlier_detection: NotRequired[OutlierDetectionDoc | None]
    tls: NotRequired[ClusterTlsDoc | None]


class InboundAppDoc(TypedDict):
    address: str
    port: int


class MtlsDoc(TypedDict):
    mode: str
    port_level: dict[str, str]


class SourceDoc(TypedDict):
    principals: list[str]
    not_principals: list[str]
    namespaces: list[str]
    not_namespaces: list[str]
    ip_blocks: list[str]
    not_ip_blocks: list[str]
    remote_ip_blocks: list[str]
    not_remote_ip_blocks: list[str]
    request_principals: list[str]
    not_request_principals: list[str]


class OperationDoc(TypedDict):
    hosts: list[str]
    not_hosts: list[str]
    methods: list[str]
    not_methods: list[str]
    paths: list[str]
    not_paths: list[str]
    ports: list[str]
    not_ports: list[str]


class ConditionDoc(TypedDict):
    key: str
    values: list[str]
    not_values: list[str]


# "from" is a Python keyword, hence the functional form.
AuthzRuleDoc = TypedDict(
    "AuthzRuleDoc", {"from": list[SourceDoc], "to": list[OperationDoc], "when": list[ConditionDoc]}
)


class AuthzPolicyDoc(TypedDict):
    name: str
    rules: list[AuthzRuleDoc]


class _AuthzDryRunDoc(TypedDict, total=False):
    """Present only when such policies exist (``istio.io/dry-run: "true"``): evaluated, never enforced."""

    dry_run_deny: list[AuthzPolicyDoc]
    dry_run_allow: list[AuthzPolicyDoc]


class AuthzDoc(_AuthzDryRunDoc):
    deny: list[AuthzPolicyDoc]
    allow: list[AuthzPolicyDoc]
    audit: list[AuthzPolicyDoc]


class RateLimitDoc(TypedDict):
    max_tokens: int
    tokens_per_fill: int
    fill_interval_ms: int
    response_headers: dict[str, str]


class JwtHeaderDoc(TypedDict):
    name: str
    prefix: str


class ClaimToHeaderDoc(TypedDict):
    header: str
    claim: str


class JwtRuleDoc(TypedDict):
    """One jwtRule of a RequestAuthentication selecting this proxy (keys inline, fetched by the control
    plane)."""

    name: str
    rule: int
    issuer: str
    audiences: list[str]
    jwks: str | None
    jwks_error: str | None
    from_headers: list[JwtHeaderDoc]
    from_params: list[str]
    forward_original_token: bool
    output_payload_to_header: str | None
    output_claim_to_headers: list[ClaimToHeaderDoc]


class InboundDoc(TypedDict, total=False):
    app: InboundAppDoc | None
    service_port: int | None
    mtls: MtlsDoc | None
    authz: AuthzDoc | None
    rate_limit: RateLimitDoc | None
    jwt: list[JwtRuleDoc]  # present only when a RequestAuthentication selects the proxy
    protocol: Literal["http", "tcp"]  # "tcp": the Service port is opaque TCP, relayed to the app (tunnel)


class TrustDoc(TypedDict):
    root_pem: str


PathNormalization = Literal["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"]


class MeshDoc(TypedDict, total=False):
    """Mesh-wide request handling (Istio's meshConfig)."""

    path_normalization: PathNormalization
    stream_idle_timeout_ms: int
    outbound_traffic_policy: Literal["ALLOW_ANY", "REGISTRY_ONLY"]
    num_trusted_proxies: int  # gateways: X-Forwarded-For hops trusted for remote.ip
    proxy_protocol: bool  # gateways: every connection starts with a PROXY protocol header (v1 or v2)


class _StandinCaDoc(TypedDict, total=False):
    ca_pem: str  # the stand-ins' CA, trusted for TLS origination (absent: none)


class EgressDoc(_StandinCaDoc):
    """Where hosts outside the mesh are (meshkit.proxy.egress)."""

    hosts: dict[str, str]  # "host:port" -> "address:port"
    real_dns: bool


class TracingDoc(TypedDict, total=False):
    """Tracing (mesh config's defaultConfig.tracing.sampling, then Telemetry resources)."""

    sampling: float
    report: bool


class GatewayTlsServerDoc(TypedDict):
    """An HTTPS server of a Gateway selecting this gateway proxy (proxy.tls.serving)."""

    gateway: str  # "namespace/name"
    server: int  # index in spec.servers
    port: int
    hosts: list[str]  # SNI names it answers for ("*", "*.example.com", exact)
    credential: str  # the Secret's name (credentialName)
    cert_pem: str
    key_pem: str


class TlsDestinationDoc(TypedDict):
    """Where a ``tls`` route sends the tunnel (proxy.tunnel)."""

    host: str  # the destination's FQDN or external host (metrics' destination_service)
    port: int
    cluster: str | None  # a registry service's cluster (its endpoints); null: resolve host:port (egress)
    weight: int


class TlsRouteDoc(TypedDict):
    name: str  # "<namespace>/<VirtualService>#tls<index>"
    sni_hosts: list[str]  # exact or "*.example.com"
    port: int | None  # null: any port
    destinations: list[TlsDestinationDoc]


class TlsDoc(TypedDict):
    """TLS carried unopened, routed by SNI (config.tls_routes, proxy.tunnel)."""

    routes: list[TlsRouteDoc]
    hosts: list[str]  # "host:port" of ServiceEntry TLS/HTTPS/TCP ports (wildcards kept)


class TcpRouteDoc(TypedDict):
    name: str  # "<namespace>/<VirtualService>#tcp<index>", or "<fqdn>:<port>" (a sidecar's default route)
    port: int | None  # the Gateway TCP server port it was bound for; a sidecar's: the port connected to
    hosts: list[str] | None  # a sidecar's: the destination names it takes (null: a gateway's, any)
    destinations: list[TlsDestinationDoc]


class TcpDoc(TypedDict):
    """Opaque TCP routes: a gateway's by port, a sidecar's by host and port (config.tls_routes,
    proxy.tunnel)."""

    routes: list[TcpRouteDoc]


class GatewayMutualServerDoc(TypedDict):
    """An ISTIO_MUTUAL server of a Gateway selecting this gateway proxy (proxy.tls.gateway_mutual)."""

    gateway: str  # "namespace/name"
    server: int  # index in spec.servers
    port: int
    hosts: list[str]  # SNI names a sidecar's mutual TLS may send ("*", "*.example.com", exact)


class GatewayMutualDoc(TypedDict):
    servers: list[GatewayMutualServerDoc]
    plaintext: bool  # false: ISTIO_MUTUAL servers are its only HTTP servers, plaintext callers are refused


class _GatewayMutualSection(TypedDict, total=False):
    istio_mutual: GatewayMutualDoc  # only when the gateway has ISTIO_MUTUAL servers


class GatewayTlsDoc(_GatewayMutualSection):
    servers: list[GatewayTlsServerDoc]


class _GatewayTlsSection(TypedDict, total=False):
    gateway_tls: GatewayTlsDoc | None  # gateway proxies only


class NetworkPolicyDoc(TypedDict):
    """The pod's NetworkPolicy egress: the only upstream addresses it may connect to (``address:port``)."""

    policies: list[str]
    allowed: list[str]


class _NetworkPolicySection(TypedDict, total=False):
    network_policy: NetworkPolicyDoc | None  # only when an Egress NetworkPolicy selects the proxy's pod


class SnapshotDoc(_GatewayTlsSection, _NetworkPolicySection):
    schema: int
    version: str
    revision: NotRequired[int]
    node: NotRequired[NodeDoc | None]
    outbound: NotRequired[OutboundDoc | None]
    clusters: NotRequired[dict[str, ClusterDoc] | None]
    inbound: NotRequired[InboundDoc | None]
    trust: NotRequired[TrustDoc | None]
    mesh: NotRequired[MeshDoc | None]
    egress: NotRequired[EgressDoc | None]
    tls: NotRequired[TlsDoc | None]
    tcp: NotRequired[TcpDoc | None]
    tracing: NotRequired[TracingDoc | None]
