"""Rule builders: one call, one real Istio resource (a `Rule` dict that shows its YAML).

Each builder returns exactly the YAML Istio's docs would have you write, so what a learner sees is
what they would `kubectl apply` on a real cluster. Builders check their own arguments and raise
`LabError` naming the argument; the mesh's analyzer checks the rest when the rule is applied.
One VirtualService per host (named after the host), as Istio recommends: a later rule for the
same host replaces the earlier one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshkit.lab.display import LabError, Rule

__all__ = [
    "MTLS_MODES", "NETWORKING", "SECURITY", "TRUST_DOMAIN", "ab_test", "allow", "canary", "circuit_breaker",
    "deny", "fault", "mirror", "mtls", "outlier_detection", "principal", "rate_limit", "retries", "route",
    "timeout", "virtual_service",
]

NETWORKING = "networking.istio.io/v1"
SECURITY = "security.istio.io/v1"
TRUST_DOMAIN = "cluster.local"
MTLS_MODES = ("STRICT", "PERMISSIVE", "DISABLE", "UNSET")


def _meta(name: str, namespace: str) -> dict[str, str]:
    return {"name": name, "namespace": namespace}


def _dest(host: str, subset: str | None) -> dict[str, Any]:
    return {"host": host, **({"subset": subset} if subset else {})}


def virtual_service(host: str, http: list[dict[str, Any]], namespace: str = "default") -> Rule:
    if not host or not isinstance(host, str):
        raise LabError(f"host: expected a service name such as 'reviews', got {host!r}")
    return Rule({"apiVersion": NETWORKING, "kind": "VirtualService", "metadata": _meta(host, namespace),
                 "spec": {"hosts": [host], "http": http}})


def route(host: str, to: str | None = None, namespace: str = "default") -> Rule:
    """Every request for ``host`` to one subset (version), like Istio's virtual-service-all-v1."""
    return virtual_service(host, [{"route": [{"destination": _dest(host, to)}]}], namespace)


def canary(host: str, weights: Mapping[str, int], namespace: str = "default") -> Rule:
    """Weighted split between subsets: ``canary("reviews", {"v1": 90, "v3": 10})``."""
    if not weights:
        raise LabError("weights: give at least one subset, e.g. {'v1': 90, 'v3': 10}")
    for subset, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise LabError(f"weights[{subset!r}]: expected a whole percentage 0..100, got {weight!r}")
    total = sum(weights.values())
    if total != 100:
        raise LabError(f"weights: must add up to 100, they add up to {total} ({dict(weights)})")
    routes = [{"destination": _dest(host, subset), "weight": weight} for subset, weight in weights.items()]
    return virtual_service(host, [{"route": routes}], namespace)


def ab_test(host: str, *, header: str = "end-user", value: str, to: str, default: str,
            exact: bool = True, namespace: str = "default") -> Rule:
    """Requests whose ``header`` matches ``value`` go to subset ``to``, all others to ``default``."""
    if not header or not value:
        raise LabError("header and value: both are needed, e.g. header='end-user', value='jason'")
    match = {"headers": {header: {"exact" if exact else "prefix": value}}}
    return virtual_service(host, [
        {"match": [match], "route": [{"destination": _dest(host, to)}]},
        {"route": [{"destination": _dest(host, default)}]},
    ], namespace)


def mirror(host: str, *, to: str, percent: float = 100.0, primary: str | None = None,
           namespace: str = "default") -> Rule:
    """Serve from ``primary`` and copy ``percent`` of requests to subset ``to`` (answers discarded)."""
    if not 0 <= percent <= 100:
        raise LabError(f"percent: expected 0..100, got {percent!r}")
    return virtual_service(host, [{
        "route": [{"destination": _dest(host, primary), "weight": 100}],
        "mirror": _dest(host, to),
        "mirrorPercentage": {"value": float(percent)},
    }], namespace)


def _header_match(match: Mapping[str, str] | None) -> list[dict[str, Any]] | None:
    if not match:
        return None
    return [{"headers": {name: {"exact": value} for name, value in match.items()}}]


def fault(host: str, *, delay: str | None = None, abort: int | None = None, percent: float = 100.0,
          match: Mapping[str, str] | None = None, to: str | None = None,
          namespace: str = "default") -> Rule:
    """Inject a ``delay`` ("7s") and/or an ``abort`` (HTTP status) into ``percent`` of requests.

    With ``match={"end-user": "jason"}`` only matching requests get the fault (Istio's ratings
    example); the others are routed normally. ``to`` pins both routes to one subset.
    """
    if delay is None and abort is None:
        raise LabError("fault: give delay='7s' and/or abort=500")
    if abort is not None and not 200 <= abort <= 599:
        raise LabError(f"abort: expected an HTTP status 200..599, got {abort!r}")
    if not 0 <= percent <= 100:
        raise LabError(f"percent: expected 0..100, got {percent!r}")
    injected: dict[str, Any] = {}
    if delay is not None:
        injected["delay"] = {"fixedDelay": delay, "percentage": {"value": float(percent)}}
    if abort is not None:
        injected["abort"] = {"httpStatus": abort, "percentage": {"value": float(percent)}}
    faulty: dict[str, Any] = {"fault": injected, "route": [{"destination": _dest(host, to)}]}
    matches = _header_match(match)
    if matches is None:
        return virtual_service(host, [faulty], namespace)
    fallback = {"route": [{"destination": _dest(host, to)}]}
    return virtual_service(host, [{"match": matches, **faulty}, fallback], namespace)


def timeout(host: str, seconds: str, *, to: str | None = None, namespace: str = "default") -> Rule:
    """Give up on ``host`` after ``seconds`` ("0.5s"): the caller gets 504 and the flag UT."""
    http = [{"route": [{"destination": _dest(host, to)}], "timeout": seconds}]
    return virtual_service(host, http, namespace)


def retries(host: str, attempts: int = 3, *, per_try_timeout: str | None = None,
            retry_on: str = "5xx,gateway-error,connect-failure,reset", to: str | None = None,
            namespace: str = "default") -> Rule:
    """Retry failed requests to ``host`` up to ``attempts`` times."""
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise LabError(f"attempts: expected a whole number >= 0, got {attempts!r}")
    policy: dict[str, Any] = {"attempts": attempts, "retryOn": retry_on}
    if per_try_timeout:
        policy["perTryTimeout"] = per_try_timeout
    return virtual_service(host, [{"route": [{"destination": _dest(host, to)}], "retries": policy}],
                           namespace)


def circuit_breaker(host: str, *, max_connections: int | None = 1, max_pending: int | None = 1,
                    consecutive_errors: int | None = None, ejection_time: str = "30s", interval: str = "1s",
                    subsets: Sequence[str] = (), namespace: str = "default") -> Rule:
    """A DestinationRule limiting connections to ``host`` and ejecting failing endpoints.

    It replaces the host's DestinationRule, so list the versions routes use in ``subsets``
    (e.g. ``("v1", "v2", "v3")``) to keep them defined.
    """
    policy: dict[str, Any] = {}
    pool: dict[str, Any] = {}
    if max_connections is not None:
        pool["tcp"] = {"maxConnections": max_connections}
    if max_pending is not None:
        pool["http"] = {"http1MaxPendingRequests": max_pending, "maxRequestsPerConnection": 1}
    if pool:
        policy["connectionPool"] = pool
    if consecutive_errors is not None:
        policy["outlierDetection"] = {"consecutive5xxErrors": consecutive_errors, "interval": interval,
                                      "baseEjectionTime": ejection_time, "maxEjectionPercent": 100}
    if not policy:
        raise LabError("circuit_breaker: give max_connections, max_pending and/or consecutive_errors")
    spec: dict[str, Any] = {"host": host, "trafficPolicy": policy}
    if subsets:
        spec["subsets"] = [{"name": v, "labels": {"version": v}} for v in subsets]
    return Rule({"apiVersion": NETWORKING, "kind": "DestinationRule", "metadata": _meta(host, namespace),
                 "spec": spec})


def outlier_detection(host: str, *, consecutive_errors: int = 1, interval: str = "1s",
                      ejection_time: str = "30s", max_ejection_percent: int = 100,
                      subsets: Sequence[str] = (), namespace: str = "default") -> Rule:
    """A DestinationRule that ejects an endpoint of ``host`` after ``consecutive_errors`` 5xx in a row.

    Like `circuit_breaker`, it replaces the host's DestinationRule: list the ``subsets`` routes use.
    """
    if isinstance(consecutive_errors, bool) or not isinstance(consecutive_errors, int) \
            or consecutive_errors < 1:
        raise LabError(f"consecutive_errors: expected a whole number >= 1, got {consecutive_errors!r}")
    if not 0 <= max_ejection_percent <= 100:
        raise LabError(f"max_ejection_percent: expected 0..100, got {max_ejection_percent!r}")
    spec: dict[str, Any] = {"host": host, "trafficPolicy": {"outlierDetection": {
        "consecutive5xxErrors": consecutive_errors, "interval": interval, "baseEjectionTime": ejection_time,
        "maxEjectionPercent": max_ejection_percent}}}
    if subsets:
        spec["subsets"] = [{"name": v, "labels": {"version": v}} for v in subsets]
    return Rule({"apiVersion": NETWORKING, "kind": "DestinationRule", "metadata": _meta(host, namespace),
                 "spec": spec})


def rate_limit(workload: str, *, max_tokens: int, tokens_per_fill: int | None = None,
               fill_interval: str = "1s", namespace: str = "default") -> Rule:
    """Istio's local rate limit (task "Enabling Rate Limits using Envoy"): an EnvoyFilter putting
    Envoy's token bucket on ``workload``'s inbound side; requests over it get 429 (flag RL)."""
    if not workload:
        raise LabError("workload: name the app label to limit, e.g. 'productpage'")
    for name, value in (("max_tokens", max_tokens), ("tokens_per_fill", tokens_per_fill or max_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabError(f"{name}: expected a whole number >= 1, got {value!r}")
    bucket = {"max_tokens": max_tokens, "tokens_per_fill": tokens_per_fill or max_tokens,
              "fill_interval": fill_interval}
    percent = {"numerator": 100, "denominator": "HUNDRED"}
    limiter = {"stat_prefix": "http_local_rate_limiter", "token_bucket": bucket,
             "filter_enabled": {"runtime_key": "local_rate_limit_enabled", "default_value": percent},
             "filter_enforced": {"runtime_key": "local_rate_limit_enforced", "default_value": percent},
             "response_headers_to_add": [{"append": False,
                                          "header": {"key": "x-local-rate-limit", "value": "true"}}]}
    manager = {"filter": {"name": "envoy.filters.network.http_connection_manager"}}
    patch = {"applyTo": "HTTP_FILTER",
             "match": {"context": "SIDECAR_INBOUND", "listener": {"filterChain": manager}},
             "patch": {"operation": "INSERT_BEFORE", "value": {
                 "name": "envoy.filters.http.local_ratelimit",
                 "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                                  "type_url": "type.googleapis.com/envoy.extensions.filters.http."
                                              "local_ratelimit.v3.LocalRateLimit",
                                  "value": limiter}}}}
    return Rule({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                 "metadata": _meta(f"{workload}-local-ratelimit", namespace),
                 "spec": {"workloadSelector": {"labels": {"app": workload}}, "configPatches": [patch]}})


def mtls(mode: str, *, namespace: str = "default", workload: str | None = None) -> Rule:
    """A PeerAuthentication: ``mtls("STRICT")`` for a namespace, ``workload="reviews"`` for one app."""
    upper = mode.upper() if isinstance(mode, str) else mode
    if upper not in MTLS_MODES:
        raise LabError(f"mode: expected one of {', '.join(MTLS_MODES)}, got {mode!r}")
    spec: dict[str, Any] = {"mtls": {"mode": upper}}
    if workload:
        spec["selector"] = {"matchLabels": {"app": workload}}
    return Rule({"apiVersion": SECURITY, "kind": "PeerAuthentication",
                 "metadata": _meta(workload or "default", namespace), "spec": spec})


def principal(service_account: str, namespace: str = "default") -> str:
    """The SPIFFE principal Istio's AuthorizationPolicy matches: cluster.local/ns/NS/sa/SA."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def _authorization(action: str, to: str, *, from_accounts: Sequence[str], methods: Sequence[str],
                   paths: Sequence[str], namespace: str, name: str | None) -> Rule:
    if not to:
        raise LabError("to: name the workload (app label) the policy protects, e.g. to='reviews'")
    rule: dict[str, Any] = {}
    if from_accounts:
        rule["from"] = [{"source": {"principals": [principal(sa, namespace) for sa in from_accounts]}}]
    operation: dict[str, Any] = {}
    if methods:
        operation["methods"] = list(methods)
    if paths:
        operation["paths"] = list(paths)
    if operation:
        rule["to"] = [{"operation": operation}]
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": to}}, "action": action}
    if rule or action == "DENY":
        spec["rules"] = [rule]
    return Rule({"apiVersion": SECURITY, "kind": "AuthorizationPolicy",
                 "metadata": _meta(name or f"{to}-{action.lower()}", namespace), "spec": spec})


def allow(to: str, *, from_: Sequence[str] = (), methods: Sequence[str] = (), paths: Sequence[str] = (),
          namespace: str = "default", name: str | None = None) -> Rule:
    """ALLOW requests to workload ``to`` from these service accounts (all others are denied)."""
    return _authorization("ALLOW", to, from_accounts=from_, methods=methods, paths=paths,
                          namespace=namespace, name=name)


def deny(to: str, *, from_: Sequence[str] = (), methods: Sequence[str] = (), paths: Sequence[str] = (),
         namespace: str = "default", name: str | None = None) -> Rule:
    """DENY matching requests to workload ``to`` (403 ``RBAC: access denied``)."""
    return _authorization("DENY", to, from_accounts=from_, methods=methods, paths=paths,
                          namespace=namespace, name=name)
