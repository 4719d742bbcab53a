"""Cross-resource checks, like ``istioctl analyze``: each finding is a `Message` with a stable code.

`analyze` never raises on valid resources; it returns findings sorted by resource and field.
Errors mean "this config would not do what it says" (the control plane rejects it);
warnings mean "probably not what you meant". Codes MK0101-MK0123: their severity and meaning are
in `meshkit.config.codes` (and the table of docs/config-reference.md generated from it).
MK03xx (Kubernetes workloads) and MK04xx (Gateways): see `analyze_front_door`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

from meshkit.config import codes
from meshkit.config.analyze_front_door import check_front_door, with_config_services
from meshkit.config.analyze_gateway_api import check_gateway_api
from meshkit.config.analyze_policies import check_policies
from meshkit.config.analyze_routes import check_routes, for_sidecars
from meshkit.config.authn import RequestAuthentication
from meshkit.config.egress import ServiceEntry
from meshkit.config.gateways import EGRESS_GATEWAY_PORTS
from meshkit.config.hosts import resolve_host
from meshkit.config.messages import Message, Severity
from meshkit.config.network_policy import check_network_policies
from meshkit.config.regex import re2_error, sidecar_error
from meshkit.config.registry import Endpoint, RegistryView
from meshkit.config.resources import (
    AuthorizationPolicy,
    Destination,
    DestinationRule,
    HTTPRoute,
    PeerAuthentication,
    Resource,
    StringMatch,
    TrafficPolicy,
    VirtualService,
)
from meshkit.config.selection import ROOT_NAMESPACE, of_kind, resolve_mtls

SUPPORTED_CONDITION_KEYS = (
    "request.headers[<name>]", "source.principal", "source.namespace", "source.ip", "remote.ip",
    "destination.port", "request.auth.principal", "request.auth.audiences", "request.auth.presenter",
    "request.auth.claims[<name>]",
)
_HEADER_KEY = re.compile(r"^request\.headers\[[^\]]+\]$")
_CLAIMS_KEY = re.compile(r"^request\.auth\.claims(\[[^\[\]]+\])+$")

Finding = tuple[str, Severity, str, str]  # code, severity, field, text


def analyze(resources: Sequence[Resource], registry: RegistryView | None = None) -> list[Message]:
    """Every finding about ``resources`` (and, when given, how they fit the ``registry``)."""
    registry = with_config_services(registry, resources)
    virtual_services = of_kind(resources, VirtualService)
    destination_rules = of_kind(resources, DestinationRule)
    peer_authentications = of_kind(resources, PeerAuthentication)
    subsets = _known_subsets(destination_rules)
    messages: list[Message] = []

    def report(resource: Resource, findings: Iterator[Finding]) -> None:
        for code, severity, field, text in findings:
            messages.append(Message(code, severity, resource.ref, field, text))

    seen: set[tuple[str, str, str]] = set()
    for resource in resources:
        if resource.key in seen:
            messages.append(Message(codes.MK0114, Severity.ERROR, resource.ref, "",
                                    f"{resource.ref} is defined more than once in the input"))
        seen.add(resource.key)
    external = frozenset(h.lower() for se in of_kind(resources, ServiceEntry) for h in se.spec.hosts)
    for vs in virtual_services:
        report(vs, _check_virtual_service(vs, subsets, registry, external))
    messages.extend(_host_conflicts(virtual_services, destination_rules))
    for rule in destination_rules:
        report(rule, _check_destination_rule(rule, registry, peer_authentications))
    request_authentications = of_kind(resources, RequestAuthentication)
    for authentication in request_authentications:
        report(authentication, _check_request_authentication(authentication))
    authn_namespaces = {r.metadata.namespace for r in request_authentications}
    for policy in of_kind(resources, AuthorizationPolicy):
        has_authn = bool({policy.metadata.namespace, ROOT_NAMESPACE} & authn_namespaces)
        report(policy, _check_authorization_policy(policy, has_authn))
    messages.extend(check_front_door(resources, registry))  # Kubernetes workloads, Gateways: MK03xx, MK04xx
    messages.extend(check_gateway_api(resources, registry))  # HTTPRoute, GatewayClass: MK041x
    messages.extend(check_routes(resources))  # istioctl's VirtualService checks: MK0124-MK0127, MK0134-MK0138
    messages.extend(check_policies(resources, registry))  # DestinationRule, policies: MK0128-MK0133
    messages.extend(check_network_policies(resources))  # NetworkPolicy parts not enforced locally: MK0320
    return sorted(messages, key=lambda m: (m.resource, m.field, m.code))


# ---------------------------------------------------------------------------------------------
# VirtualService
# ---------------------------------------------------------------------------------------------


def _known_subsets(rules: Sequence[DestinationRule]) -> dict[str, list[str]]:
    known: dict[str, set[str]] = defaultdict(set)
    for rule in rules:
        host = resolve_host(rule.spec.host, rule.metadata.namespace).host
        known[host].update(subset.name for subset in rule.spec.subsets or [])
    return {host: sorted(names) for host, names in known.items()}


def _check_virtual_service(
    vs: VirtualService, subsets: Mapping[str, list[str]], registry: RegistryView | None,
    external: frozenset[str] = frozenset(),
) -> Iterator[Finding]:
    """``external``: the hosts ServiceEntries declare (a destination as good as a registry service)."""
    for index, http in enumerate(vs.spec.http or []):
        at = f"spec.http[{index}]"
        yield from _check_matches(http, at)
        yield from _check_claim_matches(vs, http, at)
        destinations = http.route or []
        # a redirect is answered by the proxy; a delegate's rules route
        if not destinations and http.redirect is None and http.delegate is None:
            yield codes.MK0116, Severity.ERROR, f"{at}.route", "http route has no route destinations"
        for j, route in enumerate(destinations):
            where = f"{at}.route[{j}].destination"
            yield from _check_destination(vs, route.destination, where, subsets, registry, external=external)
        yield from _check_weights(http, at)
        if http.mirror is not None:
            yield from _check_destination(vs, http.mirror, f"{at}.mirror", subsets, registry)
        yield from _check_fault(http, at)
        if http.mirror_percentage is not None:
            yield from _percentage(http.mirror_percentage.value, f"{at}.mirrorPercentage.value")
        if http.mirror_percent is not None:
            yield from _percentage(http.mirror_percent, f"{at}.mirrorPercent")
        if http.retries is not None and http.retries.attempts < 0:
            yield (codes.MK0110, Severity.ERROR, f"{at}.retries.attempts",
                   f"retries.attempts must be >= 0 (got {http.retries.attempts})")


def _check_destination(
    vs: VirtualService,
    destination: Destination,
    at: str,
    subsets: Mapping[str, list[str]],
    registry: RegistryView | None,
    *, external: frozenset[str] = frozenset(),
) -> Iterator[Finding]:
    resolved = resolve_host(destination.host, vs.metadata.namespace)
    if destination.subset is not None:
        known = subsets.get(resolved.host, [])
        if destination.subset not in known:
            listed = ", ".join(known) if known else "none"
            yield (codes.MK0101, Severity.ERROR, f"{at}.subset",
                   f'subset "{destination.subset}" of host "{destination.host}" is not defined by any '
                   f"DestinationRule (known subsets: {listed})")
    if registry is None or destination.host.strip().lower() in external:
        return
    service = registry.service(resolved.name, resolved.namespace or "") if resolved.name else None
    if service is None:
        yield (codes.MK0103, Severity.WARNING, f"{at}.host",
               f'host "{destination.host}" is not a service in the registry')
    elif destination.port is not None and destination.port.number not in (
            {service.port} | EGRESS_GATEWAY_PORTS.get((service.name, service.namespace), frozenset())):
        yield (codes.MK0118, Severity.WARNING, f"{at}.port.number",
               f'port {destination.port.number} is not the port of service "{service.name}" ({service.port})')


def _destination_label(destination: Destination, same_host: bool) -> str:
    if destination.subset is None:
        return destination.host
    return destination.subset if same_host else f"{destination.host} {destination.subset}"


def _check_weights(http: HTTPRoute, at: str) -> Iterator[Finding]:
    """Istio's rule: no negative weight, not all zero when there are several destinations; any
    other total is valid and splits traffic proportionally (the warning shows the effective split)."""
    destinations = http.route or []
    weights = [d.weight or 0 for d in destinations]
    negative = False
    for j, weight in enumerate(weights):
        if weight < 0:
            negative = True
            yield codes.MK0102, Severity.ERROR, f"{at}.route[{j}].weight", f"weight {weight} is negative"
    if negative:
        return
    if len(destinations) == 1:
        if destinations[0].weight not in (None, 100):
            yield (codes.MK0122, Severity.WARNING, f"{at}.route[0].weight",
                   f"weight {destinations[0].weight} has no effect: the only destination gets all traffic")
        return
    total = sum(weights)
    if len(destinations) > 1 and total == 0:
        yield (codes.MK0102, Severity.ERROR, f"{at}.route",
               "route weights sum to 0: no destination would receive traffic (Istio: total destination "
               "weight = 0)")
    elif len(destinations) > 1 and total != 100:
        same_host = len({d.destination.host for d in destinations}) == 1
        shares = [
            f"{_destination_label(d.destination, same_host)} {w * 100 / total:.1f}%"
            for d, w in zip(destinations, weights, strict=True)
        ]
        first, _, share = shares[0].rpartition(" ")
        split = ", ".join([f"{first} gets {share}", *shares[1:]])
        yield (codes.MK0122, Severity.WARNING, f"{at}.route",
               f"route weights sum to {total}: {split} (traffic is split in proportion to the weights)")


def _check_fault(http: HTTPRoute, at: str) -> Iterator[Finding]:
    fault = http.fault
    if fault is None:
        return
    if (delay := fault.delay) is not None:
        if delay.percentage is not None:
            yield from _percentage(delay.percentage.value, f"{at}.fault.delay.percentage.value")
        elif delay.percent is not None:
            yield from _percentage(delay.percent, f"{at}.fault.delay.percent")
        else:
            yield (codes.MK0113, Severity.WARNING, f"{at}.fault.delay",
                   "fault.delay sets no percentage: no request will be delayed")
    if (abort := fault.abort) is not None:
        if not 200 <= abort.http_status <= 599:
            yield (codes.MK0111, Severity.ERROR, f"{at}.fault.abort.httpStatus",
                   f"abort httpStatus {abort.http_status} is outside 200-599")
        if abort.percentage is not None:
            yield from _percentage(abort.percentage.value, f"{at}.fault.abort.percentage.value")
        else:
            yield (codes.MK0113, Severity.WARNING, f"{at}.fault.abort",
                   "fault.abort sets no percentage: no request will be aborted")
    if (fault.delay or fault.abort) and (http.timeout is not None or http.retries is not None):
        yield (codes.MK0115, Severity.INFO, f"{at}.fault",
               "fault injection disables this route's timeout and retries (as in Istio)")


def _percentage(value: float, at: str) -> Iterator[Finding]:
    if not 0 <= value <= 100:
        yield codes.MK0107, Severity.ERROR, at, f"percentage {value:g} is outside 0-100"


def _string_matches(http: HTTPRoute, at: str) -> Iterator[tuple[str, StringMatch]]:
    for i, match in enumerate(http.match or []):
        where = f"{at}.match[{i}]"
        for name in ("uri", "method", "authority"):
            value = getattr(match, name)
            if value is not None:
                yield f"{where}.{name}", value
        for name, alias in (("headers", "headers"), ("query_params", "queryParams"),
                            ("without_headers", "withoutHeaders")):
            for key, value in (getattr(match, name) or {}).items():
                yield f"{where}.{alias}.{key}", value


def _check_matches(http: HTTPRoute, at: str) -> Iterator[Finding]:
    for where, match in _string_matches(http, at):
        if match.regex is None:
            continue
        refused = re2_error(match.regex)
        if refused is not None:
            yield (codes.MK0106, Severity.ERROR, f"{where}.regex",
                   f'invalid regex "{match.regex}": {refused} (RE2, the regex engine of Envoy and Istio)')
            continue
        unsupported = sidecar_error(match.regex)
        if unsupported is not None:
            yield (codes.MK0106, Severity.ERROR, f"{where}.regex",
                   f'regex "{match.regex}" is valid RE2 but meshkit\'s sidecar (Python re) cannot evaluate '
                   f"it: {unsupported}")


_CLAIM_HEADER = re.compile(r"^@request\.auth\.claims(?:(?:\.[^.\[\]]+)+|(?:\[[^\[\]]+\])+)$")


def _check_claim_matches(vs: VirtualService, http: HTTPRoute, at: str) -> Iterator[Finding]:
    """``@request.auth.claims.NAME`` header matches: well-formed, and on gateways only (Istio's rule)."""
    on_sidecars = for_sidecars(vs)
    for i, match in enumerate(http.match or []):
        for alias, field in (("headers", match.headers), ("withoutHeaders", match.without_headers)):
            for name in field or {}:
                if not name.startswith("@request.auth.claims"):
                    continue
                where = f"{at}.match[{i}].{alias}.{name}"
                if not _CLAIM_HEADER.match(name):
                    yield (codes.MK0123, Severity.ERROR, where,
                           f'"{name}" is not a JWT claim match (expected @request.auth.claims.NAME[.NESTED] '
                           "or @request.auth.claims[NAME][NESTED])")
                elif on_sidecars:
                    gateways = "[" + " ".join(vs.spec.gateways or []) + "]"
                    yield (codes.MK0120, Severity.ERROR, where,
                           f"JWT claim based routing (key: {name.removeprefix('@request.auth.claims.')}) is "
                           f"only supported for gateway, found no gateways: {gateways} (bind the "
                           "VirtualService to a Gateway that a RequestAuthentication covers)")


def _host_conflicts(
    virtual_services: Sequence[VirtualService], destination_rules: Sequence[DestinationRule]
) -> Iterator[Message]:
    claims: dict[str, list[tuple[VirtualService, int]]] = defaultdict(list)
    for vs in virtual_services:
        if vs.spec.gateways and "mesh" not in vs.spec.gateways:
            continue  # bound to gateways only: not a sidecar conflict
        for i, host in enumerate(vs.spec.hosts):
            claims[resolve_host(host, vs.metadata.namespace).host].append((vs, i))
    for claimants in claims.values():
        first = claimants[0][0]
        for vs, i in claimants[1:]:
            if vs.key == first.key:
                continue
            yield Message(codes.MK0104, Severity.ERROR, vs.ref, f"spec.hosts[{i}]",
                          f'host "{vs.spec.hosts[i]}" is also claimed by {first.ref}; '
                          f"only one VirtualService per host is used ({first.ref}). This can be fixed by "
                          "merging the conflicting VirtualServices into a single resource.")
    rules: dict[tuple[str, str], list[DestinationRule]] = defaultdict(list)
    for rule in destination_rules:
        host = resolve_host(rule.spec.host, rule.metadata.namespace).host
        rules[(rule.metadata.namespace, host)].append(rule)
    for same in rules.values():
        for rule in same[1:]:
            if rule.key == same[0].key:
                continue
            yield Message(codes.MK0105, Severity.WARNING, rule.ref, "spec.host",
                          f'host "{rule.spec.host}" already has {same[0].ref} in this namespace; '
                          f"only one DestinationRule per host is used ({same[0].ref})")


# ---------------------------------------------------------------------------------------------
# DestinationRule
# ---------------------------------------------------------------------------------------------


def _check_destination_rule(
    rule: DestinationRule, registry: RegistryView | None, peer_authentications: Sequence[PeerAuthentication]
) -> Iterator[Finding]:
    resolved = resolve_host(rule.spec.host, rule.metadata.namespace)
    endpoints = None
    if (
        registry is not None and resolved.name is not None
        and registry.service(resolved.name, resolved.namespace or "") is not None
    ):
        endpoints = registry.endpoints_of(resolved.name, resolved.namespace or "")
    yield from _check_policy(rule, rule.spec.traffic_policy, "spec.trafficPolicy", None,
                             endpoints, peer_authentications=peer_authentications)
    names: set[str] = set()
    for j, subset in enumerate(rule.spec.subsets or []):
        at = f"spec.subsets[{j}]"
        if subset.name in names:
            yield (codes.MK0112, Severity.ERROR, f"{at}.name",
                   f'subset name "{subset.name}" is defined more than once')
        names.add(subset.name)
        labels = subset.labels or {}
        selected = None
        if endpoints is not None:
            selected = [e for e in endpoints if all(e.labels.get(k) == v for k, v in labels.items())]
            if not selected:
                shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
                text = (f'subset "{subset.name}" of host "{rule.spec.host}" selects no endpoint '
                        f"(labels: {shown})")
                yield codes.MK0108, Severity.WARNING, f"{at}.labels", text
        yield from _check_policy(rule, subset.traffic_policy, f"{at}.trafficPolicy", labels,
                                 selected, peer_authentications=peer_authentications)


def _check_policy(
    rule: DestinationRule,
    policy: TrafficPolicy | None,
    at: str,
    subset_labels: Mapping[str, str] | None,
    endpoints: Sequence[Endpoint] | None,
    *,
    peer_authentications: Sequence[PeerAuthentication],
) -> Iterator[Finding]:
    if policy is None:
        return
    od = policy.outlier_detection
    if od is not None and od.max_ejection_percent is not None:
        yield from _percentage(od.max_ejection_percent, f"{at}.outlierDetection.maxEjectionPercent")
    if policy.tls is None or policy.tls.mode != "DISABLE":
        return
    resolved = resolve_host(rule.spec.host, rule.metadata.namespace)
    if resolved.namespace is None:
        return
    workloads: list[tuple[str, Mapping[str, str]]]
    if endpoints is not None:
        workloads = [(e.namespace, e.labels) for e in endpoints]
    else:
        workloads = [(resolved.namespace, dict(subset_labels or {}))]
    for namespace, labels in workloads:
        mtls, decided_by = resolve_mtls(namespace, labels, peer_authentications)
        if mtls["mode"] == "STRICT" and decided_by is not None:
            yield (codes.MK0109, Severity.ERROR, f"{at}.tls.mode",
                   f'tls mode DISABLE for host "{rule.spec.host}" conflicts with STRICT mTLS required by '
                   f"{decided_by.ref}; requests will be rejected")
            return


# ---------------------------------------------------------------------------------------------
# AuthorizationPolicy
# ---------------------------------------------------------------------------------------------


def _check_request_authentication(policy: RequestAuthentication) -> Iterator[Finding]:
    for i, rule in enumerate(policy.spec.jwt_rules or []):
        if rule.jwks is None and rule.jwks_uri is None:
            yield (codes.MK0121, Severity.WARNING, f"spec.jwtRules[{i}]",
                   f'issuer "{rule.issuer}" has neither jwks nor jwksUri: Istio would discover the keys from '
                   "the issuer's OpenID configuration, meshkit (no internet) does not, so every token of "
                   "this issuer is rejected (401); set jwksUri (e.g. `meshkit jwt jwks-uri`) or inline jwks")


def _no_jwt(namespace: str) -> str:
    return (f"no RequestAuthentication in namespace {namespace} or {ROOT_NAMESPACE} validates tokens, "
            "so it never matches (and its negation always does)")


def _check_authorization_policy(policy: AuthorizationPolicy, has_authn: bool = True) -> Iterator[Finding]:
    no_jwt = _no_jwt(policy.metadata.namespace)
    for i, rule in enumerate(policy.spec.rules or []):
        for j, source in enumerate(rule.from_ or []):
            for name, alias in (("request_principals", "requestPrincipals"),
                                ("not_request_principals", "notRequestPrincipals")):
                if getattr(source.source, name) and not has_authn:
                    yield (codes.MK0119, Severity.WARNING, f"spec.rules[{i}].from[{j}].source.{alias}",
                           f"{alias}: {no_jwt}")
        for j, condition in enumerate(rule.when or []):
            key = condition.key
            at = f"spec.rules[{i}].when[{j}].key"
            known = _HEADER_KEY.match(key) or _CLAIMS_KEY.match(key) or key in SUPPORTED_CONDITION_KEYS
            if not known:
                yield (codes.MK0117, Severity.ERROR, at,
                       f'condition key "{key}" is not supported by meshkit '
                       f"(supported: {', '.join(SUPPORTED_CONDITION_KEYS)})")
            elif key.startswith("request.auth.") and not has_authn:
                yield codes.MK0119, Severity.WARNING, at, f'condition key "{key}": {no_jwt}'

