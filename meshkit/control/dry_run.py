""""Why is my rule not applied?": which rule a request would match, from each caller, without traffic.

`route_dry_run` compiles the snapshot each caller's sidecar gets from the current config and
registry (the same `compile_snapshot` the push uses) and runs the sidecar's own route table on a
request described by host, path, method and headers: so the answer is what the proxy would do, not a
second implementation of Istio's matching. Per caller it tells the rule that would match (its
VirtualService and ``http[i]``), the destinations and whether their clusters exist, the later rules
the winner shadows, and, when the winner is not the rule the user expected, the likely cause: no
VirtualService for the host from this caller (bound to a gateway only, written for another namespace,
``sourceLabels`` that exclude this caller), no DestinationRule subset behind a destination (NC), or
no route at all (NR), or, for a sidecar, a host outside the registry (the outboundTrafficPolicy:
PassthroughCluster or BlackHoleCluster) or a port no Service declares for HTTP (no HTTP listener: the
connection goes on as TCP, no rule applies).

Pure: no I/O (callers, resources and registry are given).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshkit.config.compile import compile_snapshot
from meshkit.config.hosts import resolve_host
from meshkit.config.registry import Node, RegistryView
from meshkit.config.resources import Resource, VirtualService
from meshkit.config.selection import labels_match, of_kind
from meshkit.proxy.http import Headers, Request
from meshkit.proxy.routing import CompiledMatch, CompiledRoute, RouteTable, matched_prefix


def route_dry_run(resources: Sequence[Resource], view: RegistryView, callers: Sequence[Node], host: str, *,
                  path: str = "/", method: str = "GET",
                  headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Per caller, the rule ``host``+``path``+``headers`` would take (see the module docstring)."""
    request = Request(method.upper(), path, host.lower(),
                      Headers([(k.lower(), v) for k, v in (headers or {}).items()]))
    answers = [_for_caller(resources, view, caller, request) for caller in callers]
    return {"host": host, "path": path, "method": method, "headers": headers or {}, "callers": answers}


def _for_caller(resources: Sequence[Resource], view: RegistryView, caller: Node,
                request: Request) -> dict[str, Any]:
    host, path, method = request.authority, request.path, request.method
    headers = dict(request.headers.items())
    snapshot = compile_snapshot(list(resources), view, caller)
    table = RouteTable.from_snapshot(snapshot["outbound"])
    vhost = table.virtual_host(request.authority)
    answer: dict[str, Any] = {"caller": caller.workload or caller.instance, "namespace": caller.namespace,
                              "rules": [], "matched": None, "causes": []}
    if caller.kind == "sidecar" and table.opaque(request.authority):
        # no HTTP listener for the port: the sidecar carries the connection as TCP (meshkit.proxy.listener)
        policy = (snapshot.get("mesh") or {}).get("outbound_traffic_policy", "ALLOW_ANY")
        port = host.rpartition(":")[2]
        outcome = ("closed with no answer (BlackHoleCluster, UH)" if policy == "REGISTRY_ONLY" else
                   "carried as TCP to its original destination (PassthroughCluster)")
        answer["causes"].append(f"{policy}: from {answer['caller']} no Service, ServiceEntry or "
                                f"VirtualService declares port {port} for HTTP, so no HTTP listener takes "
                                f"{host!r}: no rule applies and the connection would be {outcome}")
        return answer
    if vhost is None and caller.kind == "sidecar":
        # a sidecar's unknown host: the mesh's outboundTrafficPolicy (meshkit.proxy.egress)
        policy = (snapshot.get("mesh") or {}).get("outbound_traffic_policy", "ALLOW_ANY")
        outcome = ("answered 502 (BlackHoleCluster)" if policy == "REGISTRY_ONLY" else
                   "passed through to the host itself (PassthroughCluster; 503 DF for a name with no "
                   "stand-in while real DNS is off)")
        answer["causes"].append(f"{policy}: from {answer['caller']} no service, ServiceEntry or "
                                f"VirtualService is reachable as {host!r}: the request would be {outcome}")
        answer["causes"] += _unapplied(resources, caller, host, None)
        return answer
    if vhost is None:
        answer["causes"].append(f"NR: from {answer['caller']} no service and no VirtualService is reachable "
                                f"as {host!r}: the request would get 404 NR")
        answer["causes"] += _unapplied(resources, caller, host, None)
        return answer
    bare, _, query = path.partition("?")
    for index, route in enumerate(vhost.routes):
        matched = route.match(request, bare, query or None)
        answer["rules"].append({
            "index": index, "source": route.raw.get("source"), "name": route.raw.get("name"),
            "match": route.raw.get("match") or [], "matches": matched is not False,
            "destinations": [
                {"cluster": d.cluster, "weight": d.weight, "exists": d.cluster in snapshot["clusters"]}
                for d in route.destinations],
            "redirect": _redirect_of(route, matched, request),
        })
    hits = [r for r in answer["rules"] if r["matches"]]
    if not hits:
        answer["causes"].append(f"NR: no rule of {vhost.name} matches this request: it would get 404 NR")
        answer["causes"] += [_why_not(r, headers, path, method) for r in answer["rules"]]
        return answer
    winner = answer["matched"] = hits[0]
    for shadowed in [r for r in hits[1:] if r["match"]]:  # a later catch-all is the intended fallback
        answer["causes"].append(f"rule {shadowed['source']} also matches, but {winner['source']} comes first "
                                "and wins (first match wins): it is shadowed for this request")
    if winner["redirect"] is not None:
        redirect = winner["redirect"]
        answer["causes"].append(f"redirect: {winner['source']} is answered by the proxy itself with "
                                f"{redirect['code']} Location {redirect['location']} (nothing goes upstream)")
    for dest in winner["destinations"]:
        if not dest["exists"]:
            subset = dest["cluster"].partition("|")[2]
            answer["causes"].append(
                f"NC: {winner['source']} routes to subset {subset!r} of {dest['cluster'].partition('|')[0]}, "
                f"which no DestinationRule defines: requests sent there get 503 NC")
    if winner["source"] == "default":
        answer["causes"] += _unapplied(resources, caller, host, vhost.service)
    return answer


def _redirect_of(route: CompiledRoute, matched: CompiledMatch | bool,
                 request: Request) -> dict[str, Any] | None:
    """The code and Location the proxy would answer for a redirect route, as its route step makes them."""
    if route.redirect is None or matched is False:
        return None
    location = route.redirect.location(request, *matched_prefix(matched))
    return {"code": route.redirect.code, "location": location}


def _why_not(rule: dict[str, Any], headers: dict[str, str], path: str, method: str) -> str:
    """A rule's match blocks in words, against what the request carries."""
    blocks = []
    for block in rule["match"]:
        parts = []
        for name, condition in sorted((block.get("headers") or {}).items()):
            kind, value = next(iter(condition.items())) if condition else ("present", "")
            parts.append(f"header {name} {kind} {value!r} (request: {headers.get(name.lower())!r})")
        if block.get("uri"):
            kind, value = next(iter(block["uri"].items()))
            parts.append(f"uri {kind} {value!r} (request: {path!r})")
        if block.get("method"):
            kind, value = next(iter(block["method"].items()))
            parts.append(f"method {kind} {value!r} (request: {method!r})")
        blocks.append(" and ".join(parts) or "(a condition meshkit cannot describe)")
    return f"rule {rule['source']} needs " + " or ".join(blocks)


def _unapplied(resources: Sequence[Resource], caller: Node, host: str, service: str | None) -> list[str]:
    """VirtualServices naming ``host`` that do not apply to this caller's sidecar, and why."""
    causes = []
    short = host.split(":", 1)[0]
    for vs in of_kind(resources, VirtualService):
        named = [h for h in vs.spec.hosts if h.split(".", 1)[0] == short.split(".", 1)[0]]
        if not named:
            continue
        gateways = vs.spec.gateways or []
        if gateways and "mesh" not in gateways and caller.kind == "sidecar":
            causes.append(f"{vs.ref} is bound to gateways {gateways} only: sidecars ignore it "
                          "(add 'mesh' to spec.gateways)")
            continue
        wanted = resolve_host(named[0], vs.metadata.namespace).host
        seen = resolve_host(short, caller.namespace).host
        if wanted != seen:
            causes.append(f"{vs.ref} names {named[0]!r}, which in namespace {vs.metadata.namespace} means "
                          f"{wanted}, but {host!r} from {caller.namespace} is {seen}: wrong namespace "
                          "(write the full name)")
            continue
        for index, http in enumerate(vs.spec.http or []):
            blocks = http.match or []
            if blocks and not any(labels_match(m.source_labels, caller.labels) for m in blocks):
                causes.append(f"{vs.ref}#http[{index}] only applies to callers with sourceLabels "
                              f"{[m.source_labels for m in blocks]}; {caller.workload or caller.instance} "
                              f"has {caller.labels}")
    del service
    return causes
