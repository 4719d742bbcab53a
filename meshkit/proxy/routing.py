"""The outbound route table, compiled once per snapshot from ``outbound.virtual_hosts``.

``RouteTable.from_snapshot(outbound)`` validates the virtual hosts and turns every match
into small precompiled predicates (regexes compiled once, header names and case folding
resolved up front), so that per request the work is: one dict lookup for the virtual
host, the first matching route, one weighted pick. Bad input raises ``ValueError`` with
the key path (``outbound.virtual_hosts[0].routes[2].match[0].uri.regex: ...``).
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from meshkit.proxy.http import Handler, Headers, Request
from meshkit.proxy.redirect import Redirect
from meshkit.proxy.rewrite import Rewrite

if TYPE_CHECKING:  # the schema's TypedDicts are types only: never loaded by a running sidecar
    from meshkit.proxy.schema import RouteDoc

StringTest = Callable[[str], bool]
Condition = Callable[[Request, str, str | None], bool]


def _compile_string_match(spec: Any, where: str, ignore_case: bool = False, path: bool = False) -> StringTest:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"{where}: expected exactly one of exact/prefix/regex, got {spec!r}")
    (kind, value), = spec.items()
    if not isinstance(value, str):
        raise ValueError(f"{where}.{kind}: expected a string, got {value!r}")
    if kind == PATH_SEPARATED_PREFIX and path:
        return _path_separated_prefix(value, f"{where}.{kind}", ignore_case)
    if kind == "exact":
        if ignore_case:
            folded = value.lower()
            return lambda s: s.lower() == folded
        return value.__eq__
    if kind == "prefix":
        if ignore_case:
            folded = value.lower()
            return lambda s: s.lower().startswith(folded)
        return lambda s: s.startswith(value)
    if kind == "regex":
        try:
            pattern = re.compile(value, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise ValueError(f"{where}.regex: invalid regular expression {value!r}: {exc}") from None
        # Envoy's safe_regex must match the whole value.
        return lambda s: pattern.fullmatch(s) is not None
    expected = "exact, prefix, path_separated_prefix or regex" if path else "exact, prefix or regex"
    raise ValueError(f"{where}: unknown string match {kind!r} (expected {expected})")


# Envoy's ``path_separated_prefix`` (a Gateway API ``PathPrefix``): whole path segments, so "/api"
# matches "/api", "/api/" and "/api/x" but not "/apix". A plain ``prefix`` (a VirtualService's) is a
# string prefix. Only a URI match may use it.
PATH_SEPARATED_PREFIX = "path_separated_prefix"


def _path_separated_prefix(value: str, where: str, ignore_case: bool) -> StringTest:
    if not value.startswith("/") or (value.endswith("/") and value != "/"):
        raise ValueError(f"{where}: expected a path starting with '/' and not ending with '/', got {value!r}")
    if value == "/":
        return lambda s: True
    if ignore_case:
        value = value.lower()
        folded_segment = value + "/"
        return lambda s: (low := s.lower()) == value or low.startswith(folded_segment)
    segment = value + "/"
    return lambda s: s == value or s.startswith(segment)


def _query_value(query: str | None, name: str) -> str | None:
    if not query:
        return None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return value
    return None


class CompiledMatch:
    """One element of a route's ``match`` list: all of its conditions must hold."""

    __slots__ = ("conditions", "prefix", "uri_kind")

    def __init__(self, spec: Any, where: str) -> None:
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object, got {spec!r}")
        known = {"uri", "method", "authority", "headers", "without_headers", "query_params",
                 "ignore_uri_case", "name", "port"}
        for key in spec:
            if key not in known:
                raise ValueError(f"{where}.{key}: unknown match field")
        ignore_case = bool(spec.get("ignore_uri_case", False))
        conditions: list[Condition] = []
        self.uri_kind: str | None = None
        self.prefix = ""
        uri = spec.get("uri")
        if uri is not None:
            test = _compile_string_match(uri, f"{where}.uri", ignore_case, path=True)
            self.uri_kind = next(iter(uri))
            if self.uri_kind in ("prefix", PATH_SEPARATED_PREFIX):
                self.prefix = uri[self.uri_kind]
            conditions.append(_path_condition(test))
        if spec.get("method") is not None:
            test = _compile_string_match(spec["method"], f"{where}.method")
            conditions.append(_method_condition(test))
        if spec.get("authority") is not None:
            test = _compile_string_match(spec["authority"], f"{where}.authority")
            conditions.append(_authority_condition(test))
        for field, negate in (("headers", False), ("without_headers", True)):
            headers = spec.get(field) or {}
            if not isinstance(headers, dict):
                raise ValueError(f"{where}.{field}: expected an object of header matches")
            for name, hspec in headers.items():
                test = _compile_string_match(hspec, f"{where}.{field}.{name}")
                if name.startswith(CLAIMS_HEADER):
                    claim = claim_path(name)
                    if claim is None:
                        raise ValueError(f"{where}.{field}.{name}: expected {CLAIMS_HEADER}.NAME[.NESTED] "
                                         f"or {CLAIMS_HEADER}[NAME][NESTED]")
                    conditions.append(_claim_condition(claim, test, negate))
                else:
                    conditions.append(_header_condition(name.lower(), test, negate))
        port = spec.get("port")
        if port is not None:
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise ValueError(f"{where}.port: expected a port number 1-65535, got {port!r}")
            conditions.append(_port_condition(port))
        params = spec.get("query_params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"{where}.query_params: expected an object of matches")
        for name, qspec in params.items():
            test = _compile_string_match(qspec, f"{where}.query_params.{name}")
            conditions.append(_query_condition(name, test))
        self.conditions = tuple(conditions)

    def matches(self, request: Request, path: str, query: str | None) -> bool:
        for condition in self.conditions:  # noqa: SIM110 - hot path: a loop beats all(<genexpr>)
            if not condition(request, path, query):
                return False
        return True


def _path_condition(test: StringTest) -> Condition:
    def condition(request: Request, path: str, query: str | None) -> bool:
        return test(path)

    return condition


def request_port(authority: str) -> int:
    """The destination port a request names: its Host's port (``reviews:9080``), else HTTP's 80."""
    host, colon, port = authority.rpartition(":")
    return int(port) if colon and port.isdigit() and host else 80


def _port_condition(port: int) -> Condition:
    def condition(request: Request, path: str, query: str | None) -> bool:
        return request_port(request.authority) == port

    return condition


def _method_condition(test: StringTest) -> Condition:
    def condition(request: Request, path: str, query: str | None) -> bool:
        return test(request.method)

    return condition


def _authority_condition(test: StringTest) -> Condition:
    def condition(request: Request, path: str, query: str | None) -> bool:
        return test(request.authority)

    return condition


CLAIMS_HEADER = "@request.auth.claims"
_CLAIM_DOTTED = re.compile(r"^@request\.auth\.claims((?:\.[^.\[\]]+)+)$")
_CLAIM_BRACKETED = re.compile(r"^@request\.auth\.claims((?:\[[^\[\]]+\])+)$")


def claim_path(name: str) -> list[str] | None:
    """``@request.auth.claims.group.id`` or ``@request.auth.claims[group][id]`` -> ``["group", "id"]``
    (Istio's two spellings); None for anything else."""
    if match := _CLAIM_DOTTED.match(name):
        return match[1].split(".")[1:]
    if match := _CLAIM_BRACKETED.match(name):
        return match[1][1:-1].split("][")
    return None


def _claim_condition(path: list[str], test: StringTest, negate: bool) -> Condition:
    """A JWT claim the gateway verified (``request.auth``); a list claim matches if any string does."""

    def condition(request: Request, _path: str, _query: str | None) -> bool:
        value: Any = request.auth.claims if request.auth is not None else None
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, list):
            matched = any(isinstance(item, str) and test(item) for item in value)
        else:
            matched = isinstance(value, str) and test(value)
        return matched != negate

    return condition


def _header_condition(name: str, test: StringTest, negate: bool) -> Condition:
    def condition(request: Request, path: str, query: str | None) -> bool:
        value = request.headers.get(name)
        matched = value is not None and test(value)
        return matched != negate

    return condition


def _query_condition(name: str, test: StringTest) -> Condition:
    def condition(request: Request, path: str, query: str | None) -> bool:
        value = _query_value(query, name)
        return value is not None and test(value)

    return condition


def _header_pairs(spec: Any, where: str) -> list[tuple[str, str]]:
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected an object of header names to values")
    pairs = []
    for name, value in spec.items():
        if not isinstance(value, str):
            raise ValueError(f"{where}.{name}: expected a string value, got {value!r}")
        text = f"{name}{value}"
        if any(c in text for c in "\r\n\0") or not _latin1(text):
            raise ValueError(f"{where}.{name}: header names and values must be latin-1 without CR/LF")
        pairs.append((str(name).lower(), value))
    return pairs


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


class HeaderOps:
    """Precompiled set/add/remove for one direction (request or response)."""

    __slots__ = ("add", "remove", "set")

    def __init__(self, spec: Any, where: str) -> None:
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object with set/add/remove")
        for key in spec:
            if key not in ("set", "add", "remove"):
                raise ValueError(f"{where}.{key}: unknown header operation (expected set, add, remove)")
        self.set = _header_pairs(spec.get("set"), f"{where}.set")
        self.add = _header_pairs(spec.get("add"), f"{where}.add")
        remove = spec.get("remove") or []
        if not isinstance(remove, list):
            raise ValueError(f"{where}.remove: expected a list of header names")
        self.remove = [str(k).lower() for k in remove]

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)

    def apply(self, headers: Headers) -> None:
        for name in self.remove:
            headers.remove(name)
        for name, value in self.set:
            headers.set(name, value)
        for name, value in self.add:
            headers.add(name, value)


def _header_pair(spec: Any, where: str) -> tuple[HeaderOps | None, HeaderOps | None]:
    if spec is None:
        return None, None
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected an object with request/response")
    req = HeaderOps(spec.get("request"), f"{where}.request")
    resp = HeaderOps(spec.get("response"), f"{where}.response")
    return (req or None), (resp or None)


class Destination:
    """One weighted entry of a route's ``route`` list."""

    __slots__ = ("cluster", "request_ops", "response_ops", "weight")

    def __init__(self, spec: Any, where: str) -> None:
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object")
        cluster = spec.get("cluster")
        if not isinstance(cluster, str) or not cluster:
            raise ValueError(f"{where}.cluster: expected a cluster name, got {cluster!r}")
        weight = spec.get("weight", 100)
        if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
            raise ValueError(f"{where}.weight: expected a non-negative number, got {weight!r}")
        self.cluster = cluster
        self.weight = float(weight)
        self.request_ops, self.response_ops = _header_pair(spec.get("headers"), f"{where}.headers")


class CompiledRoute:
    """A route of a virtual host: its matches, weighted destinations, header ops and rewrite."""

    __slots__ = (
        "cumulative",
        "destinations",
        "handlers",
        "matches",
        "name",
        "raw",
        "redirect",
        "request_ops",
        "response_ops",
        "rewrite",
        "rewrite_uri",
        "total_weight",
        "where",
    )

    def __init__(self, spec: Any, where: str) -> None:
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object")
        self.raw = cast("RouteDoc", spec)  # checked field by field below and by the filters' checks
        self.where = where
        # The filter chain specialised for this route, per pipeline (filled by the route filter).
        self.handlers: dict[object, Handler] = {}
        self.name = str(spec.get("name") or where)
        matches = spec.get("match") or []
        if not isinstance(matches, list):
            raise ValueError(f"{where}.match: expected a list")
        self.matches = [CompiledMatch(m, f"{where}.match[{i}]") for i, m in enumerate(matches)]
        redirect = spec.get("redirect")
        self.redirect = Redirect(redirect, f"{where}.redirect") if redirect is not None else None
        dests = spec.get("route")
        if self.redirect is not None:  # answered by the proxy: no destination (Envoy's route or redirect)
            if dests:
                raise ValueError(f"{where}.route: a route with a redirect has no destinations")
            dests = []
        elif not isinstance(dests, list) or not dests:
            raise ValueError(f"{where}.route: expected a non-empty list of destinations")
        self.destinations = [Destination(d, f"{where}.route[{i}]") for i, d in enumerate(dests)]
        self.total_weight = sum(d.weight for d in self.destinations)
        if self.total_weight <= 0 and self.redirect is None:
            raise ValueError(f"{where}.route: weights sum to 0")
        running = 0.0
        self.cumulative = []
        for dest in self.destinations:
            running += dest.weight
            self.cumulative.append(running)
        self.request_ops, self.response_ops = _header_pair(spec.get("headers"), f"{where}.headers")
        rewrite = spec.get("rewrite")
        self.rewrite = Rewrite(rewrite, f"{where}.rewrite") if rewrite is not None else None
        self.rewrite_uri = self.rewrite.uri if self.rewrite is not None else None

    def match(self, request: Request, path: str, query: str | None) -> CompiledMatch | bool:
        """The matching ``CompiledMatch`` (or True for a match-all route), else False."""
        if not self.matches:
            return True
        for candidate in self.matches:
            if candidate.matches(request, path, query):
                return candidate
        return False

    def pick(self) -> Destination:
        dests = self.destinations
        if len(dests) == 1:
            return dests[0]
        # The first destination whose cumulative weight exceeds the point (bisect runs in C).
        index = bisect_right(self.cumulative, random.random() * self.total_weight)
        return dests[index] if index < len(dests) else dests[-1]

    def rewritten_path(self, matched: CompiledMatch | bool, path: str, query: str | None) -> str:
        """The new origin-form path: replaces the matched prefix, or the whole path otherwise."""
        assert self.rewrite is not None
        return self.rewrite.path(path, query, *matched_prefix(matched))


def matched_prefix(matched: CompiledMatch | bool) -> tuple[str | None, bool]:
    """(the URI prefix ``matched`` matched, whether it is a path-separated one); (None, False) when the
    match was not on a prefix: what a redirect's ``prefix_rewrite`` replaces."""
    if isinstance(matched, CompiledMatch) and matched.uri_kind in ("prefix", PATH_SEPARATED_PREFIX):
        return matched.prefix, matched.uri_kind == PATH_SEPARATED_PREFIX
    return None, False


class VirtualHost:
    __slots__ = ("domains", "name", "routes", "service")

    def __init__(self, spec: Any, where: str) -> None:
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object")
        self.name = str(spec.get("name") or where)
        self.service = spec.get("service")
        domains = spec.get("domains")
        if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
            raise ValueError(f"{where}.domains: expected a list of host names")
        self.domains = [d.lower() for d in domains]
        routes = spec.get("routes")
        if not isinstance(routes, list):
            raise ValueError(f"{where}.routes: expected a list")
        self.routes = [CompiledRoute(r, f"{where}.routes[{i}]") for i, r in enumerate(routes)]


class RouteTable:
    """Authority -> virtual host, then first-match-wins over the host's routes."""

    __slots__ = ("_exact", "_suffixes", "_wildcard", "http_ports", "virtual_hosts")

    def __init__(self, virtual_hosts: list[VirtualHost]) -> None:
        self.virtual_hosts = virtual_hosts
        self._exact: dict[str, VirtualHost] = {}
        self._suffixes: list[tuple[str, VirtualHost]] = []
        self._wildcard: VirtualHost | None = None
        ports: set[int] = set()
        for vhost in virtual_hosts:
            for domain in vhost.domains:
                _, sep, port = domain.rpartition(":")
                if sep and port.isdigit():
                    ports.add(int(port))
                if domain == "*":
                    self._wildcard = self._wildcard or vhost
                elif domain.startswith("*"):
                    self._suffixes.append((domain[1:], vhost))
                else:
                    self._exact.setdefault(domain, vhost)
        # the ports some virtual host names: Istio's sidecar has an HTTP listener (0.0.0.0:port) on each
        self.http_ports = frozenset(ports)

    def opaque(self, authority: str) -> bool:
        """Whether a request to ``authority`` (lower-cased) finds no HTTP listener on a sidecar: its port,
        written out, is one no virtual host names (no Service, ServiceEntry or VirtualService declares
        it for HTTP). Istio's sidecar then takes the connection on its virtual outbound listener's
        passthrough filter chain, as TCP (`meshkit.proxy.tunnel`). Without a port, or with a catch-all
        ``*`` host, the request stays HTTP."""
        _, sep, port = authority.rpartition(":")
        return (bool(sep) and port.isdigit() and self._wildcard is None
                and int(port) not in self.http_ports and not authority.endswith("]"))

    @classmethod
    def from_snapshot(cls, outbound: Any, where: str = "outbound") -> RouteTable:
        if outbound is None:
            return cls([])
        if not isinstance(outbound, dict):
            raise ValueError(f"{where}: expected an object")
        vhosts = outbound.get("virtual_hosts", [])
        if not isinstance(vhosts, list):
            raise ValueError(f"{where}.virtual_hosts: expected a list")
        return cls([VirtualHost(v, f"{where}.virtual_hosts[{i}]") for i, v in enumerate(vhosts)])

    def virtual_host(self, authority: str) -> VirtualHost | None:
        """Look up a lower-cased authority, with and without its port (docs/snapshot.md)."""
        vhost = self._exact.get(authority)
        if vhost is not None:
            return vhost
        host, sep, port = authority.rpartition(":")
        if sep and port.isdigit():
            vhost = self._exact.get(host)
            if vhost is not None:
                return vhost
        else:
            host = authority
        for suffix, candidate in self._suffixes:
            if host.endswith(suffix):
                return candidate
        return self._wildcard

    def route(self, request: Request) -> tuple[VirtualHost | None, CompiledRoute | None, Any]:
        """(vhost, route, match) for ``request``; route None when nothing matches."""
        vhost = self.virtual_host(request.authority)
        if vhost is None:
            return None, None, False
        path, sep, query = request.path.partition("?")
        q = query if sep else None
        for route in vhost.routes:
            matched = route.match(request, path, q)
            if matched is not False:
                return vhost, route, matched
        return vhost, None, False
