"""EnvoyFilter, for the one use Istio's docs teach: local rate limiting on a workload's inbound side.

Istio has no first-class rate-limit API; its task "Enabling Rate Limits using Envoy" inserts
Envoy's ``envoy.filters.http.local_ratelimit`` filter with an EnvoyFilter. meshkit accepts exactly
that shape (both the ``TypedStruct`` form of the task and the direct ``LocalRateLimit`` form), and
names anything else it cannot honour — another filter, another context, a partial
``filter_enabled`` — as "not supported by meshkit" rather than ignoring it. Envoy's own field
names are snake_case, so the nested models below do not use Istio's camelCase aliases.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from meshkit.config.resources import DurationStr, IstioModel, Resource

LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
LOCAL_RATELIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
TYPED_STRUCT_TYPES = (
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
)
DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


class EnvoyModel(IstioModel):
    """Envoy's snake_case fields, extra fields forbidden like every other model."""

    model_config = ConfigDict(alias_generator=None, populate_by_name=True, extra="forbid", frozen=True)


class TokenBucketSpec(EnvoyModel):
    max_tokens: int = Field(ge=1)
    tokens_per_fill: int = Field(default=1, ge=1)
    fill_interval: DurationStr


class FractionalPercent(EnvoyModel):
    numerator: int = Field(ge=0)
    denominator: Literal["HUNDRED", "TEN_THOUSAND", "MILLION"] = "HUNDRED"

    @property
    def percent(self) -> float:
        return 100.0 * self.numerator / DENOMINATORS[self.denominator]


class RuntimeFraction(EnvoyModel):
    runtime_key: str | None = None
    default_value: FractionalPercent


class HeaderValue(EnvoyModel):
    key: str = Field(min_length=1)
    value: str


class HeaderValueOption(EnvoyModel):
    unsupported_fields = frozenset({"keep_empty_value"})

    header: HeaderValue
    append: bool | None = None
    append_action: str | None = None


class LocalRateLimit(EnvoyModel):
    """The fields of Envoy's LocalRateLimit that meshkit's sidecar implements."""

    unsupported_fields = frozenset(
        {"descriptors", "stage", "local_rate_limit_per_downstream_connection",
         "request_headers_to_add_when_not_enforced", "enable_x_ratelimit_headers", "vh_rate_limits",
         "always_consume_default_token_bucket",
         "rate_limited_as_resource_exhausted", "status"}
    )

    stat_prefix: str
    token_bucket: TokenBucketSpec
    filter_enabled: RuntimeFraction | None = None
    filter_enforced: RuntimeFraction | None = None
    response_headers_to_add: list[HeaderValueOption] | None = None

    @model_validator(mode="after")
    def _whole_traffic(self) -> LocalRateLimit:
        # Envoy checks filter_enabled% of requests and enforces on filter_enforced% of those (default
        # 0%: stats only). meshkit's sidecar enforces on every request, so it accepts exactly that.
        for name in ("filter_enabled", "filter_enforced"):
            fraction: RuntimeFraction | None = getattr(self, name)
            if fraction is None:
                raise ValueError(f"{name} must be set to 100% (meshkit enforces the limit on every request; "
                                 "Envoy's default for an absent value is 0%, which would only count)")
            if fraction.default_value.percent != 100.0:
                raise ValueError(f"{name} of {fraction.default_value.percent:g}% is not supported by meshkit "
                                 "(only 100%)")
        return self


class TypedConfig(EnvoyModel):
    """``typed_config``: a TypedStruct (``type_url`` + ``value``) or the LocalRateLimit inline."""

    model_config = ConfigDict(alias_generator=None, populate_by_name=True, extra="allow", frozen=True)

    type: str = Field(alias="@type")
    type_url: str | None = None
    value: LocalRateLimit | None = None

    @model_validator(mode="before")
    @classmethod
    def _inline_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("@type") == LOCAL_RATELIMIT_TYPE and "value" not in data:
            inline = {k: v for k, v in data.items() if k != "@type"}
            return {"@type": data["@type"], "type_url": LOCAL_RATELIMIT_TYPE, "value": inline}
        return data

    @model_validator(mode="after")
    def _local_rate_limit(self) -> TypedConfig:
        if self.type not in (*TYPED_STRUCT_TYPES, LOCAL_RATELIMIT_TYPE):
            raise ValueError(f'"@type" {self.type} is not supported by meshkit (only {LOCAL_RATELIMIT_TYPE} '
                             "or a TypedStruct wrapping it)")
        if self.type_url != LOCAL_RATELIMIT_TYPE:
            raise ValueError(f"type_url {self.type_url!r} is not supported by meshkit "
                             f"(only {LOCAL_RATELIMIT_TYPE})")
        if self.value is None:
            raise ValueError("value: the LocalRateLimit configuration is missing")
        if self.model_extra:
            raise ValueError(f"{', '.join(sorted(self.model_extra))}: unknown field")
        return self


class FilterValue(EnvoyModel):
    name: Literal["envoy.filters.http.local_ratelimit"]
    typed_config: TypedConfig


class Patch(EnvoyModel):
    operation: Literal["INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "ADD"]
    value: FilterValue


class PatchMatch(IstioModel):
    unsupported_fields = frozenset({"routeConfiguration", "cluster", "proxy"})
    unsupported_values = {"context": frozenset({"SIDECAR_OUTBOUND", "GATEWAY", "ANY"})}

    context: Literal["SIDECAR_INBOUND"]
    # Where in Envoy's HTTP connection manager the filter goes: meshkit has one inbound chain,
    # so the listener match only has to be well-formed.
    listener: dict[str, Any] | None = None


class ConfigPatch(IstioModel):
    unsupported_values = {"applyTo": frozenset({
        "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE",
        "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER"})}

    apply_to: Literal["HTTP_FILTER"]
    match: PatchMatch
    patch: Patch


class EnvoyWorkloadSelector(IstioModel):
    """EnvoyFilter's selector says ``labels`` (not ``matchLabels`` as the security kinds do)."""

    labels: dict[str, str] | None = None


class EnvoyFilterSpec(IstioModel):
    unsupported_fields = frozenset({"targetRefs"})

    workload_selector: EnvoyWorkloadSelector | None = None
    config_patches: list[ConfigPatch] = Field(min_length=1)
    priority: int | None = None

    @property
    def local_rate_limit(self) -> LocalRateLimit:
        """The (last) local rate limit this filter inserts."""
        value = self.config_patches[-1].patch.value.typed_config.value
        assert value is not None  # checked by TypedConfig
        return value


class EnvoyFilter(Resource):
    group: ClassVar[str] = "networking.istio.io"
    versions: ClassVar[tuple[str, ...]] = ("v1alpha3",)

    kind: Literal["EnvoyFilter"] = "EnvoyFilter"
    spec: EnvoyFilterSpec


def rate_limit_snapshot(spec: EnvoyFilterSpec) -> dict[str, Any]:
    """The snapshot's ``inbound.rate_limit`` (docs/snapshot.md) for one EnvoyFilter."""
    limit = spec.local_rate_limit
    bucket = limit.token_bucket
    return {
        "max_tokens": bucket.max_tokens,
        "tokens_per_fill": bucket.tokens_per_fill,
        "fill_interval_ms": bucket.fill_interval.ms,  # type: ignore[attr-defined]
        "response_headers": {h.header.key.lower(): h.header.value
                             for h in limit.response_headers_to_add or ()},
    }


ROOT_NAMESPACE = "istio-system"


def rate_limit_for(
    namespace: str, labels: dict[str, str], filters: list[EnvoyFilter]
) -> dict[str, Any] | None:
    """The rate limit a workload gets: Istio applies root-namespace EnvoyFilters mesh-wide and others
    in their own namespace; when several select the workload, meshkit applies one: its own namespace's
    over the root's, then the highest ``priority``, then the name that sorts last."""
    chosen: tuple[tuple[int, int, str], EnvoyFilter] | None = None
    for ef in filters:
        ns = ef.metadata.namespace
        if ns not in (namespace, ROOT_NAMESPACE):
            continue
        wanted = (ef.spec.workload_selector.labels if ef.spec.workload_selector else None) or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            continue
        rank = (int(ns == namespace), ef.spec.priority or 0, ef.metadata.name)
        if chosen is None or rank > chosen[0]:
            chosen = (rank, ef)
    return rate_limit_snapshot(chosen[1].spec) if chosen else None
