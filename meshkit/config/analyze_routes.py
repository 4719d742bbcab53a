"""Analyzer checks of VirtualService routing that ``istioctl`` makes (its validation and analyzers).

Called by `meshkit.config.analyze.analyze`. Wording and severity follow Istio's: what Istio's
validation webhook refuses is an Error (the apply is refused, as ``kubectl apply`` would be);
what only ``istioctl analyze`` reports is a Warning or Info and never blocks an apply (the order in
which a learner applies files must not matter). Codes (docs/config-reference.md):

MK0124 W IST0130 a rule after a catch-all, or whose every match a previous rule already has
MK0125 I IST0131 one match of a rule that a previous rule already has (same match, or a longer prefix)
MK0126 E         ``hosts: ["*"]`` on a VirtualService for sidecars (``mesh``)
MK0127 E         the same host twice in one VirtualService (``*.foo.com`` and ``a.foo.com`` too)
MK0134 W IST0132 a VirtualService host that no server of its bound Gateway exposes
MK0135 W IST0109 two VirtualServices bound to one Gateway claim the same host
MK0136 W IST0149 JWT claim routing on a gateway that no RequestAuthentication covers
MK0137 W IST0101 a ``delegate`` naming a VirtualService that does not exist
MK0138 E         a delegate misused (with ``route``, with ``gateways``, a delegate of a delegate)

It reads resources only; it must not change them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from meshkit.config import codes
from meshkit.config.authn import RequestAuthentication
from meshkit.config.gateways import MESH, Gateway, gateway_key, intersect_hosts
from meshkit.config.messages import Message, Severity
from meshkit.config.resources import HTTPMatchRequest, HTTPRoute, Resource, VirtualService
from meshkit.config.selection import ROOT_NAMESPACE, labels_match, of_kind

# the labels of the mesh's ingress gateway pods (a RequestAuthentication selects them by these)
_GATEWAY_POD_LABELS = {"app": "istio-ingressgateway", "istio": "ingressgateway"}


def for_sidecars(vs: VirtualService) -> bool:
    """Istio's ``appliesToMesh``: no ``gateways``, or ``mesh`` among them."""
    return not vs.spec.gateways or MESH in vs.spec.gateways


def check_routes(resources: Sequence[Resource]) -> list[Message]:
    """Every finding of this module about ``resources``."""
    virtual_services = of_kind(resources, VirtualService)
    messages: list[Message] = []
    for vs in virtual_services:
        messages.extend(_unreachable_rules(vs))
        messages.extend(_hosts(vs))
        messages.extend(_delegates(vs, virtual_services))
    gateways = {(g.metadata.namespace, g.metadata.name): g for g in of_kind(resources, Gateway)}
    messages.extend(_gateway_hosts(virtual_services, gateways))
    messages.extend(_claims_without_authentication(virtual_services, gateways,
                                                   of_kind(resources, RequestAuthentication)))
    return messages


# ---------------------------------------------------------------------------------------------
# unreachable rules and ineffective matches (Istio's analyzeUnreachableHTTPRules)
# ---------------------------------------------------------------------------------------------


def _rule_name(http: HTTPRoute, index: int) -> str:
    return f'"{http.name}"' if http.name else f"#{index}"


def _match_name(match: HTTPMatchRequest, index: int) -> str:
    return f'"{match.name}"' if match.name else f"#{index}"


def _match_key(match: HTTPMatchRequest, *, without_uri: bool = False) -> str:
    """The match as JSON without its name (two matches with the same key select the same requests)."""
    exclude = {"name", "uri"} if without_uri else {"name"}
    return json.dumps(match.model_dump(mode="json", exclude_none=True, exclude=exclude), sort_keys=True)


def _unreachable_rules(vs: VirtualService) -> Iterator[Message]:
    seen: dict[str, int] = {}
    # earlier uri prefixes by the rest of their match: rest -> prefix -> [(order, rule, match)]; a
    # prefix is looked up by its own shorter prefixes, so a VirtualService of thousands of rules is
    # checked in linear time (a pairwise scan took 12 s for the 8,469 rules of a 1 MB document)
    prefixes: dict[str, dict[str, list[tuple[int, int, int]]]] = {}
    order = 0
    catch_all = -1
    http_rules = vs.spec.http or []

    def unreachable(index: int, reason: str) -> Message:
        rule = _rule_name(http_rules[index], index)
        return Message(codes.MK0124, Severity.WARNING, vs.ref, f"spec.http[{index}]",
                       f"VirtualService rule {rule} not used ({reason}).")

    def ineffective(index: int, match: str, duplicate_of: str) -> Message:
        rule = _rule_name(http_rules[index], index)
        return Message(codes.MK0125, Severity.INFO, vs.ref, f"spec.http[{index}].match",
                       f"VirtualService rule {rule} match {match} is not used (duplicate/overlapping match "
                       f"in rule {duplicate_of}).")

    for index, http in enumerate(http_rules):
        if not http.match:
            if catch_all >= 0:
                yield unreachable(index, "only the last rule can have no matches")
            catch_all = index
            continue
        if catch_all >= 0:
            yield unreachable(index, "route without matches defined before")
            continue
        duplicates = 0
        for j, match in enumerate(http.match):
            key = _match_key(match)
            if key in seen:
                duplicates += 1
                yield ineffective(index, _match_name(match, j), _rule_name(http_rules[seen[key]], seen[key]))
                continue
            seen[key] = index
            prefix = match.uri.prefix if match.uri is not None else None
            if prefix is None:
                continue
            group = prefixes.setdefault(_match_key(match, without_uri=True), {})
            earliest = _earliest_covering(group, prefix, index)
            if earliest is not None:
                earlier_prefix, rule, earlier_match = earliest
                covered = _match_name(http_rules[rule].match[earlier_match], earlier_match)  # type: ignore[index]
                yield ineffective(
                    index, f"{_match_name(match, j)} of prefix {prefix}",
                    f"{covered} of prefix {earlier_prefix} on {_rule_name(http_rules[rule], rule)}")
            group.setdefault(prefix, []).append((order, index, j))
            order += 1
        if duplicates == len(http.match):
            yield unreachable(index, "all matches used by prior rules")


def _earliest_covering(group: dict[str, list[tuple[int, int, int]]], prefix: str,
                       rule: int) -> tuple[str, int, int] | None:
    """The first-seen shorter uri prefix of another rule that ``prefix`` starts with: (it, rule, match)."""
    best: tuple[int, str, int, int] | None = None
    for length in range(len(prefix)):
        for seen_at, earlier_rule, earlier_match in group.get(prefix[:length], ()):
            if earlier_rule != rule and (best is None or seen_at < best[0]):
                best = (seen_at, prefix[:length], earlier_rule, earlier_match)
                break
    return None if best is None else best[1:]


# ---------------------------------------------------------------------------------------------
# hosts of one VirtualService
# ---------------------------------------------------------------------------------------------


def _covers(a: str, b: str) -> bool:
    """Istio's ``host.Name.Matches``: equal, or one wildcard covers the other."""
    return intersect_hosts(a, b) is not None


def _hosts(vs: VirtualService) -> Iterator[Message]:
    hosts = [h.strip().lower() for h in vs.spec.hosts]
    valid = True
    if for_sidecars(vs) and hosts:
        for i, host in enumerate(hosts):
            if host == "*":
                valid = False
                yield Message(codes.MK0126, Severity.ERROR, vs.ref, f"spec.hosts[{i}]",
                              "wildcard host * is not allowed for virtual services bound to the mesh gateway "
                              "(bind it to a Gateway with `gateways:`, or name the service)")
    if not valid:
        return
    for i, first in enumerate(hosts):
        for j in range(i + 1, len(hosts)):
            if _covers(first, hosts[j]):
                yield Message(codes.MK0127, Severity.ERROR, vs.ref, f"spec.hosts[{j}]",
                              f"duplicate hosts in virtual service: {vs.spec.hosts[i]} & {vs.spec.hosts[j]}")


# ---------------------------------------------------------------------------------------------
# delegates
# ---------------------------------------------------------------------------------------------


def _delegates(vs: VirtualService, virtual_services: Sequence[VirtualService]) -> Iterator[Message]:
    known = {(v.metadata.namespace, v.metadata.name): v for v in virtual_services}
    is_delegate = not vs.spec.hosts
    if is_delegate and vs.spec.gateways:
        yield Message(codes.MK0138, Severity.ERROR, vs.ref, "spec.gateways",
                      "delegate virtual service must have no gateways specified (a VirtualService without "
                      "hosts is a delegate: the root VirtualService that delegates to it decides where it "
                      "applies)")
    for index, http in enumerate(vs.spec.http or []):
        if http.delegate is None:
            continue
        at = f"spec.http[{index}].delegate"
        if is_delegate:
            yield Message(codes.MK0138, Severity.ERROR, vs.ref, at,
                          "http delegate only applies to root virtual service (this VirtualService has no "
                          "hosts: it is itself a delegate; Istio supports one level of delegation)")
        if http.route or http.mirror is not None:
            yield Message(codes.MK0138, Severity.ERROR, vs.ref, at,
                          "http delegate and route/mirror cannot be set together: the delegate's rules "
                          "decide the destinations")
        namespace = http.delegate.namespace or vs.metadata.namespace
        target = known.get((namespace, http.delegate.name))
        if target is None:
            yield Message(codes.MK0137, Severity.WARNING, vs.ref, f"{at}.name",
                          "Referenced delegate virtual service not found: "
                          f'"{namespace}/{http.delegate.name}" (requests matching this rule get 404 '
                          "until it is applied)")
        elif target.spec.hosts:
            yield Message(codes.MK0138, Severity.ERROR, vs.ref, f"{at}.name",
                          f"{target.ref} has hosts, so it is not a delegate: a delegate VirtualService has "
                          "no hosts (remove them from it, or route to its services here)")


# ---------------------------------------------------------------------------------------------
# VirtualServices bound to Gateways
# ---------------------------------------------------------------------------------------------


def _gateway_bindings(vs: VirtualService,
                      gateways: dict[tuple[str, str], Gateway]) -> Iterator[tuple[int, Gateway]]:
    for index, reference in enumerate(vs.spec.gateways or []):
        if reference == MESH:
            continue
        gateway = gateways.get(gateway_key(reference, vs.metadata.namespace))
        if gateway is not None:
            yield index, gateway


def _server_hosts(gateway: Gateway, vs_namespace: str) -> list[str]:
    hosts = []
    for server in gateway.spec.servers:
        for entry in server.hosts:
            ns, slash, host = entry.partition("/")
            if not slash:
                hosts.append(entry.lower())
            elif ns in ("*", vs_namespace) or (ns == "." and gateway.metadata.namespace == vs_namespace):
                hosts.append(host.lower())
    return hosts


def _gateway_hosts(virtual_services: Sequence[VirtualService],
                   gateways: dict[tuple[str, str], Gateway]) -> Iterator[Message]:
    claims: dict[tuple[str, str, str], VirtualService] = {}
    for vs in virtual_services:
        for index, gateway in _gateway_bindings(vs, gateways):
            exposed = _server_hosts(gateway, vs.metadata.namespace)
            missing = [h for h in vs.spec.hosts
                       if not any(_covers(s, h.strip().lower()) for s in exposed)]
            gateway_name = f"{gateway.metadata.namespace}/{gateway.metadata.name}"
            if missing:
                listed = "[" + " ".join(missing) + "]"
                yield Message(codes.MK0134, Severity.WARNING, vs.ref, f"spec.gateways[{index}]",
                              f"one or more host {listed} defined in VirtualService "
                              f"{vs.metadata.namespace}/{vs.metadata.name} not found in Gateway "
                              f"{gateway_name}.")
            for i, host in enumerate(vs.spec.hosts):
                key = (gateway.metadata.namespace, gateway.metadata.name, host.strip().lower())
                first = claims.setdefault(key, vs)
                if first.key != vs.key:
                    yield Message(
                        codes.MK0135, Severity.WARNING, vs.ref, f"spec.hosts[{i}]",
                        f"The VirtualServices {first.metadata.namespace}/{first.metadata.name},"
                        f"{vs.metadata.namespace}/{vs.metadata.name} associated with gateway {gateway_name} "
                        f"define the same host {host} which can lead to undefined behavior (meshkit uses "
                        f"{first.ref}). This can be fixed by merging the conflicting VirtualServices into "
                        "a single resource.")


def _claim_keys(vs: VirtualService) -> list[str]:
    keys: list[str] = []
    for http in vs.spec.http or []:
        for match in http.match or []:
            for field in (match.headers, match.without_headers):
                keys.extend(k.removeprefix("@request.auth.claims").lstrip(".")
                            for k in field or {} if k.startswith("@request.auth.claims"))
    return keys


def _claims_without_authentication(
    virtual_services: Sequence[VirtualService], gateways: dict[tuple[str, str], Gateway],
    authentications: Sequence[RequestAuthentication],
) -> Iterator[Message]:
    for vs in virtual_services:
        if for_sidecars(vs):
            continue  # claim routing on sidecars is refused outright (MK0120)
        keys = _claim_keys(vs)
        if not keys:
            continue
        for index, gateway in _gateway_bindings(vs, gateways):
            pods = {**_GATEWAY_POD_LABELS} if not gateway.spec.selector else dict(gateway.spec.selector)
            covered = any(
                labels_match(a.spec.selector.match_labels if a.spec.selector else None, pods)
                for a in authentications
                if a.metadata.namespace in (ROOT_NAMESPACE, gateway.metadata.namespace)
            )
            if not covered:
                gateway_name = f"{gateway.metadata.namespace}/{gateway.metadata.name}"
                yield Message(
                    codes.MK0136, Severity.WARNING, vs.ref, f"spec.gateways[{index}]",
                    f"The virtual service uses the JWT claim based routing (key: {keys[0]}) but found no "
                    f"request authentication for the gateway ({gateway_name}) pod (istio-ingressgateway). "
                    "The request authentication must first be applied for the gateway pods to validate the "
                    "JWT token and make the claims available for routing.")

