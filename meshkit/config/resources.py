"""Typed models of the Istio API subset meshkit implements: the module importers use.

VirtualService and DestinationRule (``networking.istio.io``), PeerAuthentication and
AuthorizationPolicy (``security.istio.io``) and Telemetry's tracing part (``telemetry.istio.io``),
with Istio's own camelCase field names.
Every model forbids extra fields; each one lists the real Istio fields it does *not*
implement in ``unsupported_fields`` (and enum values in ``unsupported_values``) so the
loader can say "is not supported by meshkit" instead of "unknown field".

Validation here is per resource and structural (types, required fields, one-of).
Range and cross-resource checks live in `analyze`; turning these into the proxy
snapshot lives in `compile`.

The models live in one module per concern, and this one re-exports every name they had here:
`resource_base` (durations, `IstioModel`, `WorkloadSelector`, the `Resource` envelope),
`virtual_service`, `destination_rule`, `security` (PeerAuthentication, AuthorizationPolicy) and
`tracing` (Telemetry). This module must not define anything itself: a new model goes in the
module of its kind, and its name is added here when importers need it.
"""

from __future__ import annotations

from meshkit.config.destination_rule import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    DestinationRule,
    DestinationRuleSpec,
    HTTPSettings,
    LoadBalancerPolicy,
    LoadBalancerSettings,
    OutlierDetection,
    PortTrafficPolicy,
    Subset,
    TCPSettings,
    TrafficPolicy,
)
from meshkit.config.resource_base import (
    DUMP_SPLIT_ABOVE,
    Duration,
    DurationStr,
    IstioModel,
    ObjectMeta,
    Resource,
    WorkloadSelector,
    parse_duration_ms,
)
from meshkit.config.security import (
    AuthorizationPolicy,
    AuthorizationPolicySpec,
    Condition,
    MutualTLS,
    Operation,
    PeerAuthentication,
    PeerAuthenticationSpec,
    PortString,
    Rule,
    RuleFrom,
    RuleTo,
    Source,
)
from meshkit.config.tracing import (
    Telemetry,
    TelemetrySpec,
    Tracing,
    TracingProvider,
)
from meshkit.config.virtual_service import (
    PREFIX_MARK,
    REDIRECT_CODES,
    Delegate,
    Destination,
    HeaderOperations,
    Headers,
    HTTPFaultInjection,
    HTTPFaultInjectionAbort,
    HTTPFaultInjectionDelay,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    L4MatchAttributes,
    Percent,
    PortSelector,
    RegexRewrite,
    RouteDestination,
    StringMatch,
    TCPRoute,
    TLSMatchAttributes,
    TLSRoute,
    VirtualService,
    VirtualServiceSpec,
)

__all__ = [
    "DUMP_SPLIT_ABOVE",
    "PREFIX_MARK",
    "REDIRECT_CODES",
    "AuthorizationPolicy",
    "AuthorizationPolicySpec",
    "ClientTLSSettings",
    "Condition",
    "ConnectionPoolSettings",
    "Delegate",
    "Destination",
    "DestinationRule",
    "DestinationRuleSpec",
    "Duration",
    "DurationStr",
    "HTTPFaultInjection",
    "HTTPFaultInjectionAbort",
    "HTTPFaultInjectionDelay",
    "HTTPMatchRequest",
    "HTTPRedirect",
    "HTTPRetry",
    "HTTPRewrite",
    "HTTPRoute",
    "HTTPRouteDestination",
    "HTTPSettings",
    "HeaderOperations",
    "Headers",
    "IstioModel",
    "L4MatchAttributes",
    "LoadBalancerPolicy",
    "LoadBalancerSettings",
    "MutualTLS",
    "ObjectMeta",
    "Operation",
    "OutlierDetection",
    "PeerAuthentication",
    "PeerAuthenticationSpec",
    "Percent",
    "PortSelector",
    "PortString",
    "PortTrafficPolicy",
    "RegexRewrite",
    "Resource",
    "RouteDestination",
    "Rule",
    "RuleFrom",
    "RuleTo",
    "Source",
    "StringMatch",
    "Subset",
    "TCPRoute",
    "TCPSettings",
    "TLSMatchAttributes",
    "TLSRoute",
    "Telemetry",
    "TelemetrySpec",
    "Tracing",
    "TracingProvider",
    "TrafficPolicy",
    "VirtualService",
    "VirtualServiceSpec",
    "WorkloadSelector",
    "parse_duration_ms",
]
