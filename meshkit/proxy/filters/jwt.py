"""End-user JWT authentication (Istio's RequestAuthentication) on the inbound side.

Behaviour, as Envoy's ``jwt_authn`` filter configured by istiod:

* no token in any configured location -> the request goes on with no request principal
  (an AuthorizationPolicy decides whether that is allowed);
* a token that fails (malformed, unknown issuer, bad signature, expired, not yet valid,
  audience not allowed, keys that could not be fetched) -> ``401`` with Envoy's body
  (``Jwt verification fails``, ``Jwt is expired``, ...) and ``www-authenticate: Bearer ...``;
* a valid token -> ``request.auth`` (`AuthInfo`: principal ``<iss>/<sub>``, claims, audiences,
  presenter) for the authz filter; the token header is removed unless
  ``forward_original_token``; ``output_payload_to_header`` / ``output_claim_to_headers`` are set.

This is the ONLY sidecar module allowed to import the JOSE library (``joserfc``, which loads
``cryptography``), and it imports it lazily: only ``compile_jwt`` with at least one rule does, so a
sidecar whose snapshot has no RequestAuthentication never loads either (.importlinter's
``sidecar-no-cryptography`` contract names this module as its one exception; docs/architecture.md).
Key sets are parsed once per snapshot (and reused from the previous snapshot when unchanged),
verified tokens are cached per snapshot; nothing is parsed per request but the token itself.
It must not fetch anything: keys come inline in the snapshot (the control plane fetched them).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from meshkit.proxy.http import Handler, Request, Response

log = logging.getLogger(__name__)

# Envoy's jwt_verify_lib status texts (the 401 bodies)
BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
BAD_HEADER = "Jwt header is an invalid JSON"
BAD_PAYLOAD = "Jwt payload is an invalid JSON"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
VERIFICATION_FAILS = "Jwt verification fails"
EXPIRED = "Jwt is expired"
NOT_YET_VALID = "Jwt not yet valid"
AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
JWKS_FETCH_FAILED = "Jwks remote fetch is failed"
CLOCK_SKEW_S = 60  # Envoy's default clock_skew_seconds
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
              "HS256", "HS384", "HS512")
CACHE_SIZE = 256


class JwtFailure(Exception):
    """A token the filter refuses; ``str()`` is the 401 body."""


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """What a verified token says, as AuthorizationPolicy's ``request.auth.*`` sees it."""

    principal: str  # "<iss>/<sub>"
    claims: dict[str, Any]
    audiences: tuple[str, ...]
    presenter: str | None  # the azp claim
    issuer: str


@dataclass(slots=True)
class JwtRule:
    name: str  # "ns/name"
    issuer: str
    audiences: frozenset[str]
    keys: Any  # joserfc KeySet, or None when the keys could not be had
    error: str | None
    headers: tuple[tuple[str, str], ...]  # (lower-case name, prefix)
    params: tuple[str, ...]
    forward: bool
    payload_header: str | None
    claim_headers: tuple[tuple[str, str], ...]  # (header, claim)


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _claim_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


CacheKey = tuple[str, tuple[str, str] | None]  # (token, header it came from; None: a query parameter)


class JwtAuthn:
    """The compiled ``inbound.jwt`` of one snapshot."""

    __slots__ = ("_cache", "by_issuer", "key_sets", "locations", "output_headers", "rules")

    def __init__(self, rules: Sequence[JwtRule], key_sets: dict[str, Any] | None = None) -> None:
        self.rules = tuple(rules)
        self.key_sets = key_sets or {}  # the jwks JSON text -> its parsed KeySet
        self.by_issuer: dict[str, list[JwtRule]] = {}
        for rule in self.rules:
            self.by_issuer.setdefault(rule.issuer, []).append(rule)
        headers: dict[tuple[str, str], None] = {}
        params: dict[str, None] = {}
        for rule in self.rules:
            headers.update(dict.fromkeys(rule.headers))
            params.update(dict.fromkeys(rule.params))
        self.locations = (tuple(headers), tuple(params))
        self.output_headers = tuple(
            {h for r in self.rules for h in ([r.payload_header] if r.payload_header else [])}
            | {h for r in self.rules for h, _ in r.claim_headers}
        )
        # (token, where it was found) -> the verified result: a token accepted in one location is not
        # thereby accepted in another its rule does not read
        self._cache: OrderedDict[CacheKey, tuple[AuthInfo, JwtRule, float | None]] = OrderedDict()

    # -- finding the token ------------------------------------------------------------------------

    def extract(self, request: Request) -> tuple[str, tuple[str, str] | None] | None:
        """The token and the header it came from (None for a query parameter); None when absent."""
        header_locations, params = self.locations
        for name, prefix in header_locations:
            value = request.headers.get(name)
            if value is None:
                continue
            if prefix:
                if not value.lower().startswith(prefix.lower()):
                    continue
                value = value[len(prefix):]
            value = value.strip()
            if value:
                return value, (name, prefix)
        if params and "?" in request.path:
            for key, value in parse_qsl(request.path.split("?", 1)[1], keep_blank_values=False):
                if key in params and value:
                    return value, None
        return None

    # -- verifying it -----------------------------------------------------------------------------

    def verify(self, token: str, location: tuple[str, str] | None) -> tuple[AuthInfo, JwtRule]:
        key = (token, location)
        cached = self._cache.get(key)
        now = time.time()
        if cached is not None:
            info, rule, exp = cached
            if exp is not None and now > exp + CLOCK_SKEW_S:
                raise JwtFailure(EXPIRED)
            self._cache.move_to_end(key)
            return info, rule
        parts = token.split(".")
        if len(parts) != 3:
            raise JwtFailure(BAD_FORMAT)
        try:
            json.loads(_b64decode(parts[0]))
        except (ValueError, binascii.Error):
            raise JwtFailure(BAD_HEADER) from None
        try:
            payload = json.loads(_b64decode(parts[1]))
        except (ValueError, binascii.Error):
            raise JwtFailure(BAD_PAYLOAD) from None
        if not isinstance(payload, dict):
            raise JwtFailure(BAD_PAYLOAD)
        issuer = payload.get("iss")
        if not isinstance(issuer, str):
            raise JwtFailure(UNKNOWN_ISSUER)
        candidates = [
            r for r in self.by_issuer.get(issuer, [])
            if (location in r.headers if location is not None else bool(r.params))
        ]
        if not candidates:
            raise JwtFailure(UNKNOWN_ISSUER)
        rule = candidates[0]
        if rule.keys is None:
            raise JwtFailure(JWKS_FETCH_FAILED)
        from joserfc import jwt  # noqa: PLC0415 - loaded only once a rule with keys exists
        from joserfc.errors import JoseError  # noqa: PLC0415

        try:
            jwt.decode(token, rule.keys, algorithms=ALGORITHMS)
        except (JoseError, ValueError, TypeError):
            raise JwtFailure(VERIFICATION_FAILS) from None
        exp = payload.get("exp")
        exp = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
        if exp is not None and now > exp + CLOCK_SKEW_S:
            raise JwtFailure(EXPIRED)
        nbf = payload.get("nbf")
        if isinstance(nbf, int | float) and not isinstance(nbf, bool) and now + CLOCK_SKEW_S < nbf:
            raise JwtFailure(NOT_YET_VALID)
        audiences = _strings(payload.get("aud"))
        if rule.audiences and not rule.audiences.intersection(audiences):
            raise JwtFailure(AUDIENCE_NOT_ALLOWED)
        sub = payload.get("sub")
        info = AuthInfo(
            principal=f"{issuer}/{sub if isinstance(sub, str) else ''}",
            claims=payload,
            audiences=audiences,
            presenter=payload.get("azp") if isinstance(payload.get("azp"), str) else None,
            issuer=str(issuer),
        )
        if nbf is None or not isinstance(nbf, int | float) or now >= nbf:
            self._cache[key] = (info, rule, exp)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return info, rule

    def apply(self, request: Request, token: str, location: tuple[str, str] | None,
              info: AuthInfo, rule: JwtRule) -> None:
        """Header changes of a verified token (Envoy: forward, forward_payload_header, claim_to_headers)."""
        if not rule.forward and location is not None:
            request.headers.remove(location[0])
        if rule.payload_header:
            request.headers.set(rule.payload_header, token.split(".")[1])
        for header, claim in rule.claim_headers:
            text = _claim_text(info.claims.get(claim))
            if text is not None:
                request.headers.set(header, text)


def _unauthorized(request: Request, reason: str) -> Response:
    response = Response.local(401, reason)
    realm = f"http://{request.authority}{request.path.split('?', 1)[0]}"
    response.headers.add("www-authenticate", f'Bearer realm="{realm}", error="invalid_token"')
    return response


async def jwt_authn(request: Request, call_next: Handler) -> Response:
    """Sidecar inbound: verify the request's JWT against ``request.config.jwt`` (compiled per snapshot)."""
    policy: JwtAuthn | None = request.config.jwt
    if policy is None:
        return await call_next(request)
    return await _authenticate(policy, request, call_next)


def gateway_jwt_authn(request: Request, call_next: Handler) -> Awaitable[Response]:
    """Gateway, before routing (so a VirtualService can match ``@request.auth.claims.*``); on a
    sidecar's outbound listener ``gateway_jwt`` is None and this is one attribute read."""
    policy: JwtAuthn | None = getattr(request.config, "gateway_jwt", None)
    if policy is None:
        return call_next(request)
    return _authenticate(policy, request, call_next)


async def _authenticate(policy: JwtAuthn, request: Request, call_next: Handler) -> Response:
    for header in policy.output_headers:  # never trust what a client says a verified token held
        request.headers.remove(header)
    found = policy.extract(request)
    if found is None:
        return await call_next(request)
    token, location = found
    try:
        info, rule = policy.verify(token, location)
    except JwtFailure as failure:
        log.debug("JWT refused on %s %s: %s", request.method, request.path, failure)
        return _unauthorized(request, str(failure))
    request.auth = info
    policy.apply(request, token, location, info, rule)
    return await call_next(request)


def has_jwt_rules(snapshot: Any) -> bool:
    """Does this snapshot need the jwt filter? (``jwt`` is None when no RequestAuthentication applies.)"""
    return getattr(snapshot, "jwt", None) is not None


# --------------------------------------------------------------------------- compiling inbound.jwt

KeyLoader = Callable[[str], Any]


def _check_list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _key_set(jwks: str, where: str, previous: JwtAuthn | None, parsed: dict[str, Any]) -> Any:
    known = parsed.get(jwks) or (previous.key_sets.get(jwks) if previous is not None else None)
    if known is not None:
        parsed[jwks] = known
        return known  # the same key set as another rule or the snapshot before: not parsed again
    from joserfc.errors import JoseError  # noqa: PLC0415 - the JOSE library loads only here
    from joserfc.jwk import KeySet  # noqa: PLC0415

    try:
        keys = KeySet.import_key_set(json.loads(jwks))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{where}.jwks: not a usable JSON Web Key Set ({exc})") from None
    parsed[jwks] = keys
    return keys


def compile_jwt(doc: object, previous: JwtAuthn | None = None) -> JwtAuthn | None:
    """``inbound.jwt`` (a list of rules, docs/snapshot.md) -> `JwtAuthn`, or None when absent or empty.

    Raises ``ValueError("inbound.jwt[i].<key>: ...")`` for anything it cannot enforce (NACK).
    """
    rules: list[JwtRule] = []
    parsed: dict[str, Any] = {}
    for index, item in enumerate(_check_list(doc, "inbound.jwt")):
        where = f"inbound.jwt[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
        issuer = item.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise ValueError(f"{where}.issuer: expected a non-empty string, got {issuer!r}")
        jwks = item.get("jwks")
        error = item.get("jwks_error")
        if jwks is not None and not isinstance(jwks, str):
            raise ValueError(f"{where}.jwks: expected a JSON string or null")
        keys = _key_set(jwks, where, previous, parsed) if jwks else None
        headers = []
        for j, header in enumerate(_check_list(item.get("from_headers"), f"{where}.from_headers")):
            name = header.get("name") if isinstance(header, dict) else None
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}.from_headers[{j}].name: expected a header name")
            headers.append((name.lower(), str(header.get("prefix") or "")))
        params = tuple(str(p) for p in _check_list(item.get("from_params"), f"{where}.from_params"))
        claim_headers = []
        for j, pair in enumerate(_check_list(item.get("output_claim_to_headers"),
                                             f"{where}.output_claim_to_headers")):
            if not isinstance(pair, dict) or not pair.get("header") or not pair.get("claim"):
                raise ValueError(f"{where}.output_claim_to_headers[{j}]: expected {{header, claim}}")
            claim_headers.append((str(pair["header"]).lower(), str(pair["claim"])))
        payload_header = item.get("output_payload_to_header")
        rules.append(JwtRule(
            name=str(item.get("name") or where),
            issuer=issuer,
            audiences=frozenset(str(a) for a in _check_list(item.get("audiences"), f"{where}.audiences")),
            keys=keys,
            error=None if keys is not None else str(error or "no keys"),
            headers=tuple(headers),
            params=params,
            forward=bool(item.get("forward_original_token")),
            payload_header=str(payload_header).lower() if payload_header else None,
            claim_headers=tuple(claim_headers),
        ))
    return JwtAuthn(rules, parsed) if rules else None


def describe(policy: JwtAuthn | None) -> list[dict[str, Any]]:
    """For /config_dump: each rule's issuer and whether its keys are usable."""
    if policy is None:
        return []
    return [
        {"policy": r.name, "issuer": r.issuer, "keys": r.keys is not None, "error": r.error}
        for r in policy.rules
    ]
