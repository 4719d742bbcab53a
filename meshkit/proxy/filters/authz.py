"""Authorization (Istio's AuthorizationPolicy) on the inbound side, evaluated as Istio does.

Order: any matching DENY policy -> 403; else, if the workload has any ALLOW policy, the
request must match one of them -> else 403; AUDIT policies never change the outcome, a match
is only logged. A rule with no from/to/when matches every request; an ALLOW policy with no
rules matches none (so it denies everything). Denials answer ``403 RBAC: access denied`` with
no response flag, like Envoy's RBAC filter (it reports the policy only in its response-code
details); they are counted by the ``istio_requests_total{response_code="403"}`` metric.

Policies come from ``snapshot.inbound["authz"]`` (docs/snapshot.md) and are compiled ONCE per
snapshot by ``compile_authz`` into small predicates; the snapshot object must expose the
result as ``.authz`` (``None`` when there are no policies, and then the filter costs one
attribute read). ``compile_authz`` raises ``ValueError`` naming the key path for anything it
cannot enforce faithfully, so the snapshot is NACKed instead of half-applied.

Request attributes: ``source.principal`` is ``request.peer_identity`` without ``spiffe://``;
``source.namespace`` is the ``/ns/<ns>/`` part of it (both absent on plaintext);
``destination.port`` is ``inbound.service_port`` (the workload port PeerAuthentication and
AuthorizationPolicy use); ``request.path`` is matched as the listener normalized it under
``meshConfig.pathNormalization`` (meshkit.proxy.paths), query dropped: the path judged here
is exactly the path forwarded to the app. ``normalize_path`` (BASE) stays for callers that
judge a raw path outside a listener. ``request_principals`` and ``request.auth.*`` read
``request.auth``, which the jwt filter (filters/jwt.py, RequestAuthentication) sets for a
verified token: principal ``<iss>/<sub>``, audiences, presenter (``azp``), claims
(``request.auth.claims[a][b]`` for nested ones; a list claim matches when any of its strings
does). Without a verified token they are absent: they never match, and their ``not_`` forms
always do, as in Istio.

Dry run (Istio's ``istio.io/dry-run: "true"`` annotation): such policies arrive as
``dry_run_deny`` / ``dry_run_allow`` and never change the outcome. They are evaluated as Envoy's
shadow rules are: the DENY shadow engine denies when a dry-run DENY policy matches, the ALLOW
shadow engine denies when no dry-run ALLOW policy does; each result is logged with Envoy's words
(``shadow denied, matched policy ns[foo]-policy[deny-path-headers]-rule[0]``) in the sidecar's log:
a shadow denial as a warning, so it shows at the sidecar's default level (Envoy logs both at debug,
after the task's ``istioctl proxy-config log ... --level rbac:debug``), a shadow allow at info.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meshkit.proxy.http import Handler, Request, Response
from meshkit.proxy.paths import resolve_dots

log = logging.getLogger(__name__)

DENIED_BODY = "RBAC: access denied"


# --------------------------------------------------------------------------- the request as seen by policies


@dataclass(slots=True)
class Attributes:
    principal: str | None  # "cluster.local/ns/default/sa/sleep"
    namespace: str | None
    method: str
    path: str  # normalised, no query
    host: str
    port: int | None
    source_ip: str  # the downstream connection's address (source.ip, ipBlocks)
    remote_ip: str  # the original client's (remote.ip, remoteIpBlocks): source_ip, or from X-Forwarded-For
    headers: Any  # meshkit.proxy.http.Headers
    auth: Any  # filters/jwt.AuthInfo of a verified JWT, or None

    @classmethod
    def of(cls, request: Request, port: int | None, trusted_hops: int = 0) -> Attributes:
        principal = _strip_spiffe(request.peer_identity) if request.peer_identity else None
        source_ip = request.downstream_addr
        return cls(
            principal=principal,
            namespace=_namespace_of(principal),
            method=request.method,
            path=_without_query(request.path),
            host=request.authority.lower(),
            port=port,
            source_ip=source_ip,
            remote_ip=_trusted_client(request, trusted_hops) if trusted_hops else source_ip,
            headers=request.headers,
            auth=request.auth,
        )


def _trusted_client(request: Request, trusted_hops: int) -> str:
    """Envoy with ``use_remote_address`` and ``xff_num_trusted_hops`` N (Istio's gateways with
    ``gatewayTopology.numTrustedProxies``): the Nth address from the right of X-Forwarded-For as the
    client sent it, else the connection's. The listener has already appended the connection's
    address, so here it is the (N+1)th from the right."""
    forwarded = request.headers.get("x-forwarded-for")
    hops = [hop.strip() for hop in forwarded.split(",")] if forwarded else []
    return hops[-1 - trusted_hops] if len(hops) > trusted_hops else request.downstream_addr


def _without_query(path: str) -> str:
    """The path as the listener normalized it (meshkit.proxy.paths), query left out."""
    cut = path.find("?")
    return path if cut == -1 else path[:cut]


def _strip_spiffe(value: str) -> str:
    return value[len("spiffe://"):] if value.startswith("spiffe://") else value


def _namespace_of(principal: str | None) -> str | None:
    """``cluster.local/ns/<ns>/sa/<sa>`` -> ``<ns>`` (Istio matches ``.*/ns/<ns>/.*``)."""
    if not principal or "/ns/" not in principal:
        return None
    rest = principal.split("/ns/", 1)[1]
    return rest.split("/", 1)[0] if "/" in rest else None


_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    return char if char in _UNRESERVED else match[0].upper()


def normalize_path(raw: str) -> str:
    """The path an RFC 3986 server resolves: ``/a/./b/../%63`` -> ``/a/c``. Query and fragment dropped."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if path.startswith("/") and "%" not in path and "\\" not in path and "/." not in path:
        return path  # already normal: the common case costs two scans
    if "://" in path[:10]:  # absolute-form request target
        slash = path.find("/", path.index("://") + 3)
        path = path[slash:] if slash >= 0 else "/"
    return resolve_dots(_ESCAPE_RE.sub(_decode_unreserved, path.replace("\\", "/")))


# --------------------------------------------------------------------------- compiling matchers

Values = Callable[[str | None], bool]
Predicate = Callable[[Attributes], bool]
Getter = Callable[[Attributes], str | None]
Field = tuple[Callable[[object, str], Values], Getter]  # (matcher factory, attribute getter)


def _all_of(predicates: Sequence[Predicate]) -> Predicate:
    """AND with early exit; plain loops (generator expressions cost more per request)."""
    items = tuple(predicates)
    if len(items) == 1:
        return items[0]

    def every(attrs: Attributes) -> bool:
        for predicate in items:  # noqa: SIM110 - hot path: a loop beats all(<genexpr>)
            if not predicate(attrs):
                return False
        return True

    return every


def _any_of(predicates: Sequence[Predicate]) -> Predicate:
    items = tuple(predicates)
    if len(items) == 1:
        return items[0]

    def some(attrs: Attributes) -> bool:
        for predicate in items:  # noqa: SIM110 - hot path: a loop beats any(<genexpr>)
            if predicate(attrs):
                return True
        return False

    return some


def _string_match(pattern: object, where: str, *, fold: bool = False) -> Values:
    """Istio's string match: ``"*"`` (present, non-empty), ``"pre*"``, ``"*suf"`` or exact."""
    if not isinstance(pattern, str):
        raise ValueError(f"{where}: expected a string, got {pattern!r}")
    pat = pattern.lower() if fold else pattern

    def prep(value: str | None) -> str | None:
        return value.lower() if fold and value is not None else value

    if pat == "*":
        return bool  # presence: any non-empty value
    if "*" in pat[1:-1]:
        raise ValueError(f"{where}: {pattern!r}: '*' is only allowed as a whole value, prefix or suffix")
    if pat.endswith("*"):
        stem = pat[:-1]
        return lambda v: (w := prep(v)) is not None and w.startswith(stem)
    if pat.startswith("*"):
        tail = pat[1:]
        return lambda v: (w := prep(v)) is not None and w.endswith(tail)
    return lambda v: prep(v) == pat


def _path_match(pattern: object, where: str) -> Values:
    """Paths also accept Istio's templates: ``{*}`` one segment, ``{**}`` the rest of the path."""
    if isinstance(pattern, str) and "{" in pattern:
        parts = re.split(r"(\{\*\*\}|\{\*\})", pattern)
        regex = "".join(
            "[^/]+" if p == "{*}" else ".+" if p == "{**}" else re.escape(p) for p in parts
        )
        compiled = re.compile(f"^{regex}$")
        return lambda v: v is not None and compiled.match(v) is not None
    return _string_match(pattern, where)


def _ip_match(block: object, where: str) -> Values:
    try:
        net = ipaddress.ip_network(str(block), strict=False)
    except ValueError as exc:
        raise ValueError(f"{where}: {block!r} is not an IP address or CIDR block") from exc

    def match(value: str | None) -> bool:
        try:
            return value is not None and ipaddress.ip_address(value) in net
        except ValueError:
            return False

    return match


def _port_match(port: object, where: str) -> Values:
    text = str(port)
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{where}: {port!r} is not a port number")
    return lambda v: v == text


def _never(_: str | None) -> bool:
    return False


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _field(
    values: list[Any], negated: bool, make: Callable[[object, str], Values], where: str,
    get: Getter,
) -> Predicate:
    matchers = [make(v, f"{where}[{i}]") for i, v in enumerate(values)]

    def any_match(attrs: Attributes) -> bool:
        value = get(attrs)
        for match in matchers:  # noqa: SIM110 - hot path
            if match(value):
                return True
        return False

    if negated:
        return lambda attrs: not any_match(attrs)
    return any_match


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def _host_match(pattern: object, where: str) -> Values:
    """Hosts match case-insensitively, on the authority with or without its port."""
    match = _string_match(pattern, where, fold=True)
    return lambda v: v is not None and (match(v) or match(_strip_port(v)))


def _port_get(attrs: Attributes) -> str | None:
    return None if attrs.port is None else str(attrs.port)


_SOURCE_FIELDS: dict[str, Field] = {
    "principals": (lambda p, w: _string_match(_strip_spiffe(str(p)), w), lambda a: a.principal),
    "namespaces": (_string_match, lambda a: a.namespace),
    "ip_blocks": (_ip_match, lambda a: a.source_ip),
    "remote_ip_blocks": (_ip_match, lambda a: a.remote_ip),
    "request_principals": (_string_match, lambda a: a.auth.principal if a.auth is not None else None),
}
_OPERATION_FIELDS: dict[str, Field] = {
    "methods": (_string_match, lambda a: a.method),
    "paths": (_path_match, lambda a: a.path),
    "ports": (_port_match, _port_get),
    "hosts": (_host_match, lambda a: a.host),
}


def _section(doc: object, fields: dict[str, Field], where: str) -> Predicate:
    """One ``source`` or ``operation``: every field present must hold (AND)."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected an object, got {type(doc).__name__}")
    known = set(fields) | {f"not_{name}" for name in fields}
    for key in doc:
        if key not in known:
            raise ValueError(f"{where}.{key}: unsupported field (supported: {', '.join(sorted(known))})")
    predicates: list[Predicate] = []
    for name, (make, get) in fields.items():
        for negated, key in ((False, name), (True, f"not_{name}")):
            values = _list(doc.get(key), f"{where}.{key}")
            if not values:
                continue
            predicates.append(_field(values, negated, make, f"{where}.{key}", get))
    return _all_of(predicates)


_HEADER_KEY = re.compile(r"^request\.headers\[([^\]]+)\]$")
_CLAIMS_KEY = re.compile(r"^request\.auth\.claims((?:\[[^\[\]]+\])+)$")
_CLAIM_PART = re.compile(r"\[([^\[\]]+)\]")


def _any_string_match(pattern: object, where: str) -> Callable[[Any], bool]:
    """Istio's string match on a value that may be several strings (a list claim, audiences)."""
    match = _string_match(pattern, where)

    def any_match(value: Any) -> bool:
        if isinstance(value, tuple):
            for item in value:  # noqa: SIM110 - hot path
                if match(item):
                    return True
            return False
        return match(value)

    return any_match


def _claim_getter(path: list[str]) -> Callable[[Attributes], Any]:
    """``request.auth.claims[a][b]`` -> claim ``b`` inside ``a``: a string, a tuple of strings, or None."""

    def get(attrs: Attributes) -> Any:
        if attrs.auth is None:
            return None
        value: Any = attrs.auth.claims
        for part in path:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str))
        return None

    return get


def _condition_getter(key: object, where: str) -> Field:
    if not isinstance(key, str):
        raise ValueError(f"{where}.key: expected a string")
    header = _HEADER_KEY.match(key)
    if header:
        name = header[1].lower()

        def get_header(attrs: Attributes) -> str | None:
            found = attrs.headers.get_all(name)
            return ",".join(found) if found else None

        return _string_match, get_header
    simple: dict[str, Field] = {
        "source.principal": (_SOURCE_FIELDS["principals"][0], lambda a: a.principal),
        "source.namespace": (_string_match, lambda a: a.namespace),
        "source.ip": (_ip_match, lambda a: a.source_ip),
        "remote.ip": (_ip_match, lambda a: a.source_ip),
        "destination.port": (_port_match, _port_get),
        "request.auth.principal": (
            _string_match, lambda a: a.auth.principal if a.auth is not None else None),
        "request.auth.audiences": (
            _any_string_match, lambda a: a.auth.audiences if a.auth is not None else None),
        "request.auth.presenter": (
            _string_match, lambda a: a.auth.presenter if a.auth is not None else None),
    }
    if key in simple:
        return simple[key]
    claim = _CLAIMS_KEY.match(key)
    if claim:
        return _any_string_match, _claim_getter(_CLAIM_PART.findall(claim[1]))
    raise ValueError(
        f"{where}.key: unsupported condition key {key!r} (supported: request.headers[<name>], "
        f"{', '.join(simple)}, request.auth.claims[...])"
    )


def _condition(doc: object, where: str) -> Predicate:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected an object, got {type(doc).__name__}")
    for key in doc:
        if key not in ("key", "values", "not_values"):
            raise ValueError(f"{where}.{key}: unsupported field (supported: key, values, not_values)")
    make, get = _condition_getter(doc.get("key"), where)
    values = _list(doc.get("values"), f"{where}.values")
    not_values = _list(doc.get("not_values"), f"{where}.not_values")
    if not values and not not_values:
        raise ValueError(f"{where}: a condition needs values or not_values")
    predicates: list[Predicate] = []
    if values:
        predicates.append(_field(values, False, make, f"{where}.values", get))
    if not_values:
        predicates.append(_field(not_values, True, make, f"{where}.not_values", get))
    return _all_of(predicates)


def _rule(doc: object, where: str) -> Predicate:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected an object, got {type(doc).__name__}")
    for key in doc:
        if key not in ("from", "to", "when"):
            raise ValueError(f"{where}.{key}: unsupported field (supported: from, to, when)")
    parts: list[Predicate] = []
    sources = [
        _section(s.get("source", s) if isinstance(s, dict) else s, _SOURCE_FIELDS, f"{where}.from[{i}]")
        for i, s in enumerate(_list(doc.get("from"), f"{where}.from"))
    ]
    if sources:
        parts.append(_any_of(sources))
    operations = [
        _section(o.get("operation", o) if isinstance(o, dict) else o, _OPERATION_FIELDS, f"{where}.to[{i}]")
        for i, o in enumerate(_list(doc.get("to"), f"{where}.to"))
    ]
    if operations:
        parts.append(_any_of(operations))
    when = _list(doc.get("when"), f"{where}.when")
    parts.extend(_condition(c, f"{where}.when[{i}]") for i, c in enumerate(when))
    return _all_of(parts)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str  # "ns/name"
    rules: tuple[Predicate, ...]

    def first_match(self, attrs: Attributes) -> int | None:
        for index, rule in enumerate(self.rules):
            if rule(attrs):
                return index
        return None


def _policy(doc: object, where: str) -> CompiledPolicy:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected an object, got {type(doc).__name__}")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: a policy needs a name")
    for key in doc:
        if key not in ("name", "rules"):
            raise ValueError(f"{where}.{key}: unsupported field (supported: name, rules)")
    rules = _list(doc.get("rules"), f"{where}.rules")
    return CompiledPolicy(name, tuple(_rule(r, f"{where}.rules[{i}]") for i, r in enumerate(rules)))


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class Shadow:
    """One shadow engine's result for a request (dry-run policies): Envoy's dynamic metadata."""

    engine: str  # "istio_dry_run_deny_" / "istio_dry_run_allow_" (Envoy's shadow rules stat prefix)
    denied: bool
    policy_id: str  # "ns[foo]-policy[deny-path-headers]-rule[0]", "" when no policy matched

    def log_line(self) -> str:
        result = "denied" if self.denied else "allowed"
        if self.policy_id:
            return f"shadow {result}, matched policy {self.policy_id}"
        return f"shadow {result}, no policy matched"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policy: str | None  # the policy that decided ("ns/name"), None when no policy matched
    reason: str  # Envoy-style: "rbac_access_denied_matched_policy[ns/name]" / "allowed_by[...]"
    audited: tuple[str, ...] = ()
    shadows: tuple[Shadow, ...] = ()


def _policy_id(policy: CompiledPolicy, rule: int) -> str:
    """Istio's RBAC policy id: ``ns[NS]-policy[NAME]-rule[I]``."""
    namespace, _, name = policy.name.partition("/")
    return f"ns[{namespace}]-policy[{name}]-rule[{rule}]"


def _first(policies: tuple[CompiledPolicy, ...], attrs: Attributes) -> str:
    for policy in policies:
        rule = policy.first_match(attrs)
        if rule is not None:
            return _policy_id(policy, rule)
    return ""


@dataclass(frozen=True, slots=True)
class AuthzPolicies:
    deny: tuple[CompiledPolicy, ...]
    allow: tuple[CompiledPolicy, ...]
    audit: tuple[CompiledPolicy, ...]
    port: int | None
    dry_run_deny: tuple[CompiledPolicy, ...] = ()
    dry_run_allow: tuple[CompiledPolicy, ...] = ()
    trusted_hops: int = 0  # a gateway's numTrustedProxies: where remote.ip comes from

    def evaluate(self, request: Request) -> Decision:
        attrs = Attributes.of(request, self.port, self.trusted_hops)
        decision = self._enforced(attrs)
        if not (self.dry_run_deny or self.dry_run_allow):
            return decision
        return self._with_shadows(decision, attrs)

    def _with_shadows(self, decision: Decision, attrs: Attributes) -> Decision:
        shadows = []
        if self.dry_run_deny:
            matched = _first(self.dry_run_deny, attrs)
            shadows.append(Shadow("istio_dry_run_deny_", bool(matched), matched))
        if self.dry_run_allow:
            matched = _first(self.dry_run_allow, attrs)
            shadows.append(Shadow("istio_dry_run_allow_", not matched, matched))
        return Decision(decision.allowed, decision.policy, decision.reason, decision.audited, tuple(shadows))

    def _enforced(self, attrs: Attributes) -> Decision:
        audited = tuple(p.name for p in self.audit if p.first_match(attrs) is not None)
        for policy in self.deny:
            if policy.first_match(attrs) is not None:
                reason = f"rbac_access_denied_matched_policy[{policy.name}]"
                return Decision(False, policy.name, reason, audited)
        if self.allow:
            for policy in self.allow:
                if policy.first_match(attrs) is not None:
                    return Decision(True, policy.name, f"allowed_by[{policy.name}]", audited)
            return Decision(False, None, "rbac_access_denied_matched_policy[none]", audited)
        return Decision(True, None, "no_allow_policy", audited)


ACTIONS = ("deny", "allow", "audit", "dry_run_deny", "dry_run_allow")


def compile_authz(authz: object, *, port: int | None = None, trusted_hops: int = 0,
                  proxied: bool = False) -> AuthzPolicies | None:
    """Compile ``inbound.authz`` (``{"deny": [...], "allow": [...], "audit": [...]}`` or None).

    ``port`` is ``inbound.service_port``; ``trusted_hops`` a gateway's ``X-Forwarded-For`` hops to
    trust for ``remote.ip``; ``proxied``: a gateway reading PROXY protocol headers
    (`meshkit.proxy.proxied.ProxiedAuthzPolicies`). Returns None when there is no policy at all.
    Raises ``ValueError("inbound.authz.<action>[i]...: ...")`` for what it cannot enforce.
    """
    if authz is None:
        return None
    if not isinstance(authz, dict):
        raise ValueError(f"inbound.authz: expected an object, got {type(authz).__name__}")
    for key in authz:
        if key not in ACTIONS:
            raise ValueError(f"inbound.authz.{key}: unsupported action (supported: {', '.join(ACTIONS)})")

    def compiled(action: str) -> tuple[CompiledPolicy, ...]:
        where = f"inbound.authz.{action}"
        return tuple(_policy(p, f"{where}[{i}]") for i, p in enumerate(_list(authz.get(action), where)))

    kind = AuthzPolicies
    if proxied:  # loaded only for a gateway behind a PROXY protocol load balancer
        from meshkit.proxy.proxied import ProxiedAuthzPolicies  # noqa: PLC0415

        kind = ProxiedAuthzPolicies
    policies = kind(compiled("deny"), compiled("allow"), compiled("audit"), port,
                             compiled("dry_run_deny"), compiled("dry_run_allow"), trusted_hops)
    if not any((policies.deny, policies.allow, policies.audit,
                policies.dry_run_deny, policies.dry_run_allow)):
        return None
    return policies


def denied() -> Response:
    return Response.local(403, DENIED_BODY)


async def authz(request: Request, call_next: Handler) -> Response:
    """Enforce ``request.config.authz`` (compiled per snapshot) on an inbound request."""
    try:
        policies: AuthzPolicies | None = request.config.authz
    except AttributeError:
        log.error("snapshot has no compiled .authz; refusing the request (wiring bug)")
        return Response.local(500, "authz: the snapshot carries no compiled authorization policies")
    if policies is None:
        return await call_next(request)
    return await _enforce(policies, request, call_next)


def gateway_authz(request: Request, call_next: Handler) -> Awaitable[Response]:
    """A gateway's AuthorizationPolicies (selected by its labels, e.g. ``app: istio-ingressgateway``),
    judged before routing as Envoy's RBAC filter on the gateway's listener; on a sidecar's outbound
    listener ``gateway_authz`` is None and this is one attribute read."""
    policies: AuthzPolicies | None = getattr(request.config, "gateway_authz", None)
    if policies is None:
        return call_next(request)
    return _enforce(policies, request, call_next)


async def _enforce(policies: AuthzPolicies, request: Request, call_next: Handler) -> Response:
    decision = policies.evaluate(request)
    if decision.audited:
        log.info(
            "AUDIT %s %s from %s matched %s",
            request.method, request.path, request.peer_identity or request.downstream_addr,
            ", ".join(decision.audited),
        )
    for shadow in decision.shadows:  # a shadow denial shows at the sidecar's default level (warning)
        log.log(logging.WARNING if shadow.denied else logging.INFO,
                "rbac %s %s: %s", request.method, request.path, shadow.log_line())
    if not decision.allowed:
        log.debug("denied %s %s: %s", request.method, request.path, decision.reason)
        return denied()
    return await call_next(request)


def policy_names(policies: AuthzPolicies | None) -> Sequence[str]:
    """For /config_dump: ``["DENY ns/a", "ALLOW ns/b", ...]``."""
    if policies is None:
        return []
    return [
        f"{action} {p.name}"
        for action, group in (("DENY", policies.deny), ("ALLOW", policies.allow), ("AUDIT", policies.audit),
                              ("DRY-RUN DENY", policies.dry_run_deny),
                              ("DRY-RUN ALLOW", policies.dry_run_allow))
        for p in group
    ]
