"""RequestAuthentication (``security.istio.io``): end-user JWT authentication, as data.

The model (Istio's field names), which workloads a RequestAuthentication selects (Istio's rule:
the workload's namespace with a matching or no selector, plus the root namespace), and the
snapshot form the sidecar verifies tokens with (``inbound.jwt``, docs/snapshot.md).

A rule with ``jwksUri`` needs the keys behind the URL: the control plane fetches them (as istiod
does) and hands them to the compiler as ``jwks_by_uri``; this module never opens a socket. A URI
whose keys are missing or failed to fetch compiles into a rule with ``jwks: null`` and the error,
and the sidecar then rejects every token of that issuer with 401 (Istio's behaviour).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from meshkit.config.resources import IstioModel, Resource, WorkloadSelector
from meshkit.config.selection import policies_for

# Envoy's default token locations when a rule names none.
DEFAULT_HEADER = {"name": "authorization", "prefix": "Bearer "}
DEFAULT_PARAM = "access_token"


class JWTHeader(IstioModel):
    name: str = Field(min_length=1)
    prefix: str | None = None


class ClaimToHeader(IstioModel):
    header: str = Field(min_length=1)
    claim: str = Field(min_length=1)


class JWTRule(IstioModel):
    unsupported_fields = frozenset({"fromCookies", "timeout"})

    issuer: str = Field(min_length=1)
    audiences: list[str] | None = None
    jwks_uri: str | None = None
    jwks: str | None = None
    from_headers: list[JWTHeader] | None = None
    from_params: list[str] | None = None
    output_payload_to_header: str | None = None
    forward_original_token: bool = False
    output_claim_to_headers: list[ClaimToHeader] | None = None

    @model_validator(mode="after")
    def _jwks_is_json(self) -> JWTRule:
        if self.jwks is not None:
            try:
                document = json.loads(self.jwks)
            except ValueError as exc:
                raise ValueError(f"jwks: not valid JSON ({exc})") from None
            if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
                raise ValueError('jwks: expected a JSON Web Key Set: {"keys": [...]}')
        if self.jwks_uri is not None and not self.jwks_uri.startswith(("http://", "https://")):
            raise ValueError(f'jwksUri: "{self.jwks_uri}" is not an http:// or https:// URL')
        return self


class RequestAuthenticationSpec(IstioModel):
    unsupported_fields = frozenset({"targetRef", "targetRefs"})

    selector: WorkloadSelector | None = None
    jwt_rules: list[JWTRule] | None = None


class RequestAuthentication(Resource):
    group: ClassVar[str] = "security.istio.io"
    versions: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")

    kind: Literal["RequestAuthentication"] = "RequestAuthentication"
    spec: RequestAuthenticationSpec = RequestAuthenticationSpec()


def request_authentications_for(
    namespace: str, labels: Mapping[str, str], policies: Sequence[RequestAuthentication]
) -> list[RequestAuthentication]:
    """Those selecting a workload: its namespace's and the root namespace's (`policies_for`)."""
    return policies_for(namespace, labels, policies)


def jwks_uris(policies: Sequence[Any]) -> Iterator[tuple[str, str]]:
    """Every ``(jwksUri, resource ref)`` of rules without inline keys (what the control plane fetches)."""
    for policy in policies:
        if not isinstance(policy, RequestAuthentication):
            continue
        for rule in policy.spec.jwt_rules or []:
            if rule.jwks is None and rule.jwks_uri:
                yield rule.jwks_uri, policy.ref


def compile_jwt(
    policies: Sequence[RequestAuthentication], jwks_by_uri: Mapping[str, str | None] | None = None,
    errors_by_uri: Mapping[str, str] | None = None,
) -> list[dict[str, Any]] | None:
    """``inbound.jwt``: one entry per jwtRule of the selected policies (None when there are none)."""
    rules: list[dict[str, Any]] = []
    for policy in policies:
        for index, rule in enumerate(policy.spec.jwt_rules or []):
            rules.append(_rule(policy, index, rule, jwks_by_uri or {}, errors_by_uri or {}))
    return rules or None


def _rule(
    policy: RequestAuthentication, index: int, rule: JWTRule, jwks_by_uri: Mapping[str, str | None],
    errors_by_uri: Mapping[str, str],
) -> dict[str, Any]:
    jwks: str | None = rule.jwks
    error: str | None = None
    if jwks is None:
        if rule.jwks_uri is None:
            error = "neither jwks nor jwksUri is set"
        else:
            jwks = jwks_by_uri.get(rule.jwks_uri)
            if jwks is None:
                error = errors_by_uri.get(rule.jwks_uri, f"the keys of {rule.jwks_uri} are not fetched yet")
    headers = [
        {"name": h.name.lower(), "prefix": h.prefix or ""} for h in rule.from_headers or []
    ]
    params = list(rule.from_params or [])
    if not headers and not params:
        headers, params = [dict(DEFAULT_HEADER)], [DEFAULT_PARAM]
    return {
        "name": f"{policy.metadata.namespace}/{policy.metadata.name}",
        "rule": index,
        "issuer": rule.issuer,
        "audiences": list(rule.audiences or []),
        "jwks": jwks,
        "jwks_error": error,
        "from_headers": headers,
        "from_params": params,
        "forward_original_token": rule.forward_original_token,
        "output_payload_to_header": rule.output_payload_to_header.lower()
        if rule.output_payload_to_header else None,
        "output_claim_to_headers": [
            {"header": c.header.lower(), "claim": c.claim} for c in rule.output_claim_to_headers or []
        ],
    }
