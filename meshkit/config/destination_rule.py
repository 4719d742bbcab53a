"""DestinationRule (``networking.istio.io`` v1/v1beta1/v1alpha3): the models, with Istio's field names.

Traffic policies (load balancing, connection pools, outlier detection, client TLS, per-port
settings and `TrafficPolicy.for_port`, Istio's merge), subsets and the kind itself.

Validation is per resource and structural; it must not check across resources (that is
`analyze`), compile policies (`compile`) or import any meshkit module but `resource_base` and
`virtual_service` (its `PortSelector`). Importers use `meshkit.config.resources`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from meshkit.config.resource_base import DurationStr, IstioModel, Resource, WorkloadSelector
from meshkit.config.virtual_service import PortSelector

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


class DestinationRule(Resource):
    group = "networking.istio.io"
    versions = ("v1", "v1beta1", "v1alpha3")

    kind: Literal["DestinationRule"] = "DestinationRule"
    spec: DestinationRuleSpec
