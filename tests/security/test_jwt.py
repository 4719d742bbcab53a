"""RequestAuthentication: Istio YAML -> compile_snapshot -> the sidecar's Snapshot -> the real inbound
policy chain (jwt filter, authz filter, to the app), with Istio's sample key and tokens and with
tokens minted by meshkit's demo key.

No processes here; tests/security/test_e2e_jwt.py runs the same through a real mesh.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError
from meshkit.config.registry import Node, RegistryView, Service
from meshkit.control import jwt_demo
from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.authz import DENIED_BODY, authz
from meshkit.proxy.filters.jwt import (
    AUDIENCE_NOT_ALLOWED,
    BAD_FORMAT,
    EXPIRED,
    JWKS_FETCH_FAILED,
    UNKNOWN_ISSUER,
    VERIFICATION_FAILS,
    jwt_authn,
)
from meshkit.proxy.http import Headers, Request, Response
from meshkit.proxy.snapshot import Snapshot, SnapshotError

SAMPLES = Path(__file__).parent / "istio_jwt"
ISTIO_JWKS = (SAMPLES / "jwks.json").read_text()
DEMO = (SAMPLES / "demo.jwt").read_text().strip()
GROUPS = (SAMPLES / "groups-scope.jwt").read_text().strip()
ISSUER = "testing@secure.istio.io"
HTTPBIN = Node("httpbin-v1-0", "foo", "httpbin-v1", "httpbin", {"app": "httpbin", "version": "v1"},
               service_account="httpbin", app_port=8000)
REGISTRY = RegistryView(services=(Service("httpbin", "foo", 8000),))

# Istio's "Authentication Policy" task, verbatim but for the namespace of the policy.
REQUEST_AUTHENTICATION = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: "jwt-example"
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwks: {json.dumps(ISTIO_JWKS)}
"""
REQUIRE_JWT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
       requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]
"""
REQUIRE_GROUP = REQUIRE_JWT + """    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
"""


class App:
    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return Response.local(200, "app")


def snapshot(yaml_text: str, previous: Snapshot | None = None, **compile_options: Any) -> Snapshot:
    doc = compile_snapshot(load_resources(yaml_text), REGISTRY, HTTPBIN, **compile_options)
    return Snapshot.from_json(json.loads(json.dumps(doc)), previous)


async def send(snap: Snapshot, headers: list[tuple[str, str]] | None = None, path: str = "/headers",
               ) -> tuple[Response, App]:
    app = App()
    handler = build_chain([jwt_authn, authz], app)
    request = Request("GET", path, "httpbin.foo:8000", Headers(list(headers or [])), direction="inbound",
                      downstream_addr="127.0.0.1", config=snap)
    return await handler(request), app


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def test_istio_task_valid_invalid_and_missing_tokens() -> None:
    snap = snapshot(REQUEST_AUTHENTICATION)
    ok, app = await send(snap, bearer(DEMO))
    assert ok.status == 200
    assert app.requests[0].auth.principal == f"{ISSUER}/{ISSUER}"
    assert app.requests[0].auth.claims["foo"] == "bar"
    invalid, app = await send(snap, bearer("deadbeef"))
    assert (invalid.status, invalid.body) == (401, BAD_FORMAT.encode()) and not app.requests
    assert invalid.headers.get("www-authenticate", "").startswith('Bearer realm="http://httpbin.foo:8000/headers"')
    tampered = DEMO[:-6] + ("AAAAAA" if not DEMO.endswith("AAAAAA") else "BBBBBB")
    bad_signature, _ = await send(snap, bearer(tampered))
    assert (bad_signature.status, bad_signature.body) == (401, VERIFICATION_FAILS.encode())
    missing, app = await send(snap)
    assert missing.status == 200 and app.requests[0].auth is None


async def test_forward_original_token_false_removes_the_header_and_true_keeps_it() -> None:
    _, app = await send(snapshot(REQUEST_AUTHENTICATION), bearer(DEMO))
    assert "authorization" not in app.requests[0].headers
    forwarding = REQUEST_AUTHENTICATION + "    forwardOriginalToken: true\n"
    _, app = await send(snapshot(forwarding), bearer(DEMO))
    assert app.requests[0].headers.get("authorization") == f"Bearer {DEMO}"


async def test_output_payload_and_claims_to_headers() -> None:
    spec = REQUEST_AUTHENTICATION + (
        "    outputPayloadToHeader: x-jwt-payload\n"
        "    outputClaimToHeaders:\n"
        "    - {header: x-jwt-foo, claim: foo}\n    - {header: x-jwt-none, claim: nope}\n"
    )
    spoofed = [("x-jwt-payload", "forged"), ("x-jwt-foo", "forged")]
    _, app = await send(snapshot(spec), bearer(DEMO) + spoofed)
    headers = app.requests[0].headers
    payload = headers.get("x-jwt-payload") or ""
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["foo"] == "bar"
    assert headers.get_all("x-jwt-foo") == ["bar"] and "x-jwt-none" not in headers
    _, app = await send(snapshot(spec), spoofed)  # no token: forged outputs never reach the app
    assert "x-jwt-payload" not in app.requests[0].headers and "x-jwt-foo" not in app.requests[0].headers


async def test_from_headers_and_from_params() -> None:
    spec = REQUEST_AUTHENTICATION + (
        "    fromHeaders:\n    - {name: x-jwt-assertion, prefix: \"Token \"}\n    fromParams: [my_token]\n"
    )
    snap = snapshot(spec)
    ok, app = await send(snap, [("x-jwt-assertion", f"Token {DEMO}")])
    assert ok.status == 200 and app.requests[0].auth is not None
    assert "x-jwt-assertion" not in app.requests[0].headers
    ok, app = await send(snap, path=f"/headers?my_token={DEMO}")
    assert ok.status == 200 and app.requests[0].auth is not None
    # the default locations (Authorization: Bearer, ?access_token=) no longer apply
    ignored, app = await send(snap, bearer("garbage"))
    assert ignored.status == 200 and app.requests[0].auth is None
    refused, _ = await send(snap, [("x-jwt-assertion", "Token garbage")])
    assert refused.status == 401


def _unsigned(payload: object) -> str:
    def segment(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{segment({'alg': 'RS256'})}.{segment(payload)}.c2ln"


@pytest.mark.parametrize(("token", "body"), [
    (_unsigned({"iss": ["not", "a", "string"]}), UNKNOWN_ISSUER),
    (_unsigned({"iss": {"a": 1}}), UNKNOWN_ISSUER),
    (_unsigned(["a list"]), "Jwt payload is an invalid JSON"),
    (_unsigned({"iss": ISSUER, "sub": "x"}), VERIFICATION_FAILS),  # right issuer, signature "sig"
    ("a.b.c", "Jwt header is an invalid JSON"),
    ("e30.%%%.c2ln", "Jwt payload is an invalid JSON"),
    ("only.two", BAD_FORMAT),
])
async def test_hostile_tokens_get_a_named_401(token: str, body: str) -> None:
    response, app = await send(snapshot(REQUEST_AUTHENTICATION), bearer(token))
    assert (response.status, response.body.decode()) == (401, body) and not app.requests


async def test_a_cached_token_is_not_accepted_where_its_rule_does_not_look() -> None:
    other_issuer_rule = (
        "  - issuer: someone-else\n"
        f"    jwks: {json.dumps(ISTIO_JWKS)}\n"
        "    fromHeaders: [{name: x-other-token}]\n"
    )
    snap = snapshot(REQUEST_AUTHENTICATION + other_issuer_rule)
    assert (await send(snap, bearer(DEMO)))[0].status == 200  # verified and cached for Authorization
    # the same token in x-other-token: only the someone-else rule reads that header -> not its issuer
    refused, _ = await send(snap, [("x-other-token", DEMO)])
    assert (refused.status, refused.body) == (401, UNKNOWN_ISSUER.encode())


async def test_issuer_audience_and_expiry() -> None:
    wrong_issuer = REQUEST_AUTHENTICATION.replace('issuer: "testing@secure.istio.io"', 'issuer: "other"')
    refused, _ = await send(snapshot(wrong_issuer), bearer(DEMO))
    assert (refused.status, refused.body) == (401, UNKNOWN_ISSUER.encode())
    audiences = REQUEST_AUTHENTICATION + "    audiences: [httpbin]\n"
    refused, _ = await send(snapshot(audiences), bearer(DEMO))  # the sample token has no aud
    assert (refused.status, refused.body) == (401, AUDIENCE_NOT_ALLOWED.encode())


def _demo_key_policy(tmp_path: Path, extra: str = "") -> str:
    jwks = json.dumps(jwt_demo.public_jwks(tmp_path))
    return REQUEST_AUTHENTICATION.replace(json.dumps(ISTIO_JWKS), json.dumps(jwks)) + extra


async def test_demo_key_tokens_expiry_audience_and_claims(tmp_path: Path) -> None:
    snap = snapshot(_demo_key_policy(tmp_path, "    audiences: [httpbin, other]\n"))
    token = jwt_demo.issue(tmp_path, {"aud": "httpbin", "groups": ["group1"]}, expires_s=60)
    ok, app = await send(snap, bearer(token))
    assert ok.status == 200 and app.requests[0].auth.audiences == ("httpbin",)
    expired = jwt_demo.issue(tmp_path, {"aud": "httpbin"}, expires_s=-3600)
    refused, _ = await send(snap, bearer(expired))
    assert (refused.status, refused.body) == (401, EXPIRED.encode())
    # Istio's sample tokens verify against the same JWKS (it serves both keys) but have no aud
    refused, _ = await send(snap, bearer(GROUPS))
    assert refused.body == AUDIENCE_NOT_ALLOWED.encode()


async def test_the_key_file_is_private_and_stable(tmp_path: Path) -> None:
    first = jwt_demo.public_jwks(tmp_path)
    assert first == jwt_demo.public_jwks(tmp_path)
    assert (jwt_demo.key_path(tmp_path).stat().st_mode & 0o777) == 0o600
    assert (jwt_demo.key_path(tmp_path).parent.stat().st_mode & 0o777) == 0o700
    assert [k["kid"] for k in first["keys"]][1] == "DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ"
    assert all("d" not in key for key in first["keys"]), "the public JWKS must not carry the private key"


@pytest.mark.parametrize(("policy", "headers", "status"), [
    (REQUIRE_JWT, [], 403),  # no token: no request principal
    (REQUIRE_JWT, bearer(DEMO), 200),
    (REQUIRE_GROUP, bearer(DEMO), 403),  # demo.jwt has no groups claim
    (REQUIRE_GROUP, bearer(GROUPS), 200),  # groups-scope.jwt: groups [group1, group2]
    (REQUIRE_GROUP.replace('["group1"]', '["group3"]'), bearer(GROUPS), 403),
])
async def test_authorization_on_request_principals_and_claims(
    policy: str, headers: list[tuple[str, str]], status: int,
) -> None:
    response, _ = await send(snapshot(REQUEST_AUTHENTICATION + "---\n" + policy), headers)
    assert response.status == status
    if status == 403:
        assert response.body == DENIED_BODY.encode()


@pytest.mark.parametrize(("condition", "status"), [
    ('{key: "request.auth.principal", values: ["testing@secure.istio.io/*"]}', 200),
    ('{key: "request.auth.claims[scope]", values: ["scope2"]}', 200),
    ('{key: "request.auth.claims[scope]", notValues: ["scope2"]}', 403),
    ('{key: "request.auth.claims[nested][deeper]", values: ["x"]}', 403),
    ('{key: "request.auth.audiences", values: ["*"]}', 403),  # no aud claim in the sample
    ('{key: "request.auth.presenter", notValues: ["*"]}', 200),
])
async def test_request_auth_conditions(condition: str, status: int) -> None:
    policy = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: cond, namespace: foo}}
spec:
  rules:
  - when: [{condition}]
"""
    response, _ = await send(snapshot(REQUEST_AUTHENTICATION + "---\n" + policy), bearer(GROUPS))
    assert response.status == status


async def test_nested_claims(tmp_path: Path) -> None:
    policy = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nested, namespace: foo}
spec:
  rules:
  - when: [{key: "request.auth.claims[realm][roles]", values: ["admin"]}]
"""
    snap = snapshot(_demo_key_policy(tmp_path) + "---\n" + policy)
    admin = jwt_demo.issue(tmp_path, {"realm": {"roles": ["user", "admin"]}})
    user = jwt_demo.issue(tmp_path, {"realm": {"roles": ["user"]}})
    assert (await send(snap, bearer(admin)))[0].status == 200
    assert (await send(snap, bearer(user)))[0].status == 403


async def test_jwks_uri_not_fetched_rejects_every_token_but_serves_requests_without_one() -> None:
    spec = REQUEST_AUTHENTICATION.replace(f"jwks: {json.dumps(ISTIO_JWKS)}",
                                          'jwksUri: "http://127.0.0.1:9/jwks.json"')
    errors = {"http://127.0.0.1:9/jwks.json": "RequestAuthentication/foo/jwt-example: cannot fetch"}
    snap = snapshot(spec, jwks_errors=errors)
    assert snap.doc["inbound"]["jwt"][0]["jwks_error"] == errors["http://127.0.0.1:9/jwks.json"]
    refused, _ = await send(snap, bearer(DEMO))
    assert (refused.status, refused.body) == (401, JWKS_FETCH_FAILED.encode())
    assert (await send(snap))[0].status == 200
    fetched = snapshot(spec, jwks={"http://127.0.0.1:9/jwks.json": ISTIO_JWKS})
    assert (await send(fetched, bearer(DEMO)))[0].status == 200


def test_key_sets_are_parsed_once_per_snapshot_and_reused_by_the_next() -> None:
    first = snapshot(REQUEST_AUTHENTICATION)
    second = snapshot(REQUEST_AUTHENTICATION + "    forwardOriginalToken: true\n", previous=first)
    assert first.jwt is not None and second.jwt is not None
    assert second.jwt.rules[0].keys is first.jwt.rules[0].keys


def test_no_request_authentication_means_no_jwt_section() -> None:
    other = REQUEST_AUTHENTICATION.replace("app: httpbin", "app: reviews")
    assert "jwt" not in compile_snapshot(load_resources(other), REGISTRY, HTTPBIN)["inbound"]
    assert snapshot(other).jwt is None


def test_bad_input_is_named() -> None:
    with pytest.raises(ConfigError) as error:
        load_resources(REQUEST_AUTHENTICATION.replace(json.dumps(ISTIO_JWKS), '"not json"'))
    text = str(error.value)
    assert "RequestAuthentication/foo/jwt-example" in text and "jwks" in text
    doc = compile_snapshot(load_resources(REQUEST_AUTHENTICATION), REGISTRY, HTTPBIN)
    doc["inbound"]["jwt"][0]["jwks"] = '{"keys": [{"kty": "RSA"}]}'
    with pytest.raises(SnapshotError, match=r"inbound\.jwt\[0\]\.jwks"):
        Snapshot.from_json(doc)
