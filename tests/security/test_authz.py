"""AuthorizationPolicy evaluation through the real authz filter, as Istio's documented semantics say."""

# ruff: noqa: E501  (the policy matrix reads best as one case per line)

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.authz import (
    DENIED_BODY,
    AuthzPolicies,
    authz,
    compile_authz,
    normalize_path,
    policy_names,
)
from meshkit.proxy.http import Headers, Request, Response
from meshkit.proxy.paths import BASE, normalize

from .conftest import ALICE, BOB, MALLORY

SERVICE_PORT = 9080


@dataclass
class _Snapshot:
    """Stands in for PROXY-CORE's Snapshot: the one attribute the filter reads."""

    authz: AuthzPolicies | None


class _App:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: Request) -> Response:
        self.calls += 1
        return Response.local(200, "app")


async def _status(
    doc: dict[str, Any] | None,
    *,
    method: str = "GET",
    path: str = "/",
    peer: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    authority: str = "bob:9080",
    source: str = "127.0.0.1",
    port: int = SERVICE_PORT,
) -> int:
    app = _App()
    handler = build_chain([authz], app)
    normal = normalize(path, BASE)  # what the listener hands the chain (meshConfig default)
    assert normal is not None
    request = Request(
        method, normal, authority, Headers(list(headers or [])), direction="inbound",
        downstream_addr=source, peer_identity=peer, config=_Snapshot(compile_authz(doc, port=port)),
    )
    response = await handler(request)
    if response.status == 403:
        assert response.body == DENIED_BODY.encode() and response.flags == ""
        assert app.calls == 0, "a denied request must not reach the app"
    else:
        assert app.calls == 1
    return response.status


def allow(*rules: dict[str, Any], name: str = "default/allow") -> dict[str, Any]:
    return {"allow": [{"name": name, "rules": list(rules)}]}


def deny(*rules: dict[str, Any], name: str = "default/deny") -> dict[str, Any]:
    return {"deny": [{"name": name, "rules": list(rules)}]}


def frm(**source: Any) -> dict[str, Any]:
    return {"from": [source]}


def to(**operation: Any) -> dict[str, Any]:
    return {"to": [operation]}


def when(key: str, values: list[str] | None = None, not_values: list[str] | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"key": key}
    if values is not None:
        cond["values"] = values
    if not_values is not None:
        cond["not_values"] = not_values
    return {"when": [cond]}


P = ALICE.removeprefix("spiffe://")  # policies name principals without the scheme

CASES: list[tuple[str, dict[str, Any] | None, dict[str, Any], int]] = [
    # (case, policies, request, expected status)
    ("no policy allows", None, {}, 200),
    ("empty authz object allows", {"deny": [], "allow": [], "audit": []}, {}, 200),
    ("ALLOW with no rules denies all", allow(), {"peer": ALICE}, 403),
    ("ALLOW with an empty rule allows all", allow({}), {}, 200),
    ("principal exact: match", allow(frm(principals=[P])), {"peer": ALICE}, 200),
    ("principal exact: other", allow(frm(principals=[P])), {"peer": BOB}, 403),
    ("principal exact: plaintext", allow(frm(principals=[P])), {}, 403),
    ("principal with spiffe:// also accepted", allow(frm(principals=[ALICE])), {"peer": ALICE}, 200),
    ("principal prefix", allow(frm(principals=["cluster.local/ns/default/*"])), {"peer": BOB}, 200),
    ("principal prefix: other ns", allow(frm(principals=["cluster.local/ns/default/*"])), {"peer": MALLORY}, 403),
    ("principal suffix", allow(frm(principals=["*/sa/alice"])), {"peer": ALICE}, 200),
    ("principal suffix: other", allow(frm(principals=["*/sa/alice"])), {"peer": BOB}, 403),
    ("principal *: any mTLS peer", allow(frm(principals=["*"])), {"peer": MALLORY}, 200),
    ("principal *: not plaintext", allow(frm(principals=["*"])), {}, 403),
    ("DENY notPrincipals *: plaintext denied", deny(frm(not_principals=["*"])), {}, 403),
    ("DENY notPrincipals *: mTLS passes", deny(frm(not_principals=["*"])), {"peer": BOB}, 200),
    ("notPrincipals: listed one excluded", allow(frm(not_principals=[P])), {"peer": ALICE}, 403),
    ("notPrincipals: others allowed", allow(frm(not_principals=[P])), {"peer": BOB}, 200),
    ("namespaces: match", allow(frm(namespaces=["default"])), {"peer": BOB}, 200),
    ("namespaces: other", allow(frm(namespaces=["default"])), {"peer": MALLORY}, 403),
    ("namespaces: plaintext has none", allow(frm(namespaces=["default"])), {}, 403),
    ("not_namespaces", deny(frm(not_namespaces=["default"])), {"peer": MALLORY}, 403),
    ("source fields AND", allow(frm(principals=[P], namespaces=["evil"])), {"peer": ALICE}, 403),
    ("from entries OR", allow({"from": [{"principals": [P]}, {"namespaces": ["evil"]}]}), {"peer": MALLORY}, 200),
    ("ip_blocks", allow(frm(ip_blocks=["127.0.0.0/8"])), {"source": "127.0.0.5"}, 200),
    ("not_ip_blocks", allow(frm(not_ip_blocks=["127.0.0.1"])), {"source": "127.0.0.1"}, 403),
    ("method: match", allow(to(methods=["GET", "HEAD"])), {"method": "HEAD"}, 200),
    ("method: other", allow(to(methods=["GET"])), {"method": "POST"}, 403),
    ("not_methods", allow(to(not_methods=["DELETE"])), {"method": "DELETE"}, 403),
    ("path exact", allow(to(paths=["/ratings"])), {"path": "/ratings"}, 200),
    ("path exact ignores the query", allow(to(paths=["/ratings"])), {"path": "/ratings?id=1"}, 200),
    ("path exact: longer", allow(to(paths=["/ratings"])), {"path": "/ratings/1"}, 403),
    ("path prefix", allow(to(paths=["/api/*"])), {"path": "/api/v1/x"}, 200),
    ("path prefix escaped by dot segments", allow(to(paths=["/api/*"])), {"path": "/api/../admin"}, 403),
    ("path suffix", allow(to(paths=["*.html"])), {"path": "/index.html"}, 200),
    ("path template {*}", allow(to(paths=["/reviews/{*}"])), {"path": "/reviews/1"}, 200),
    ("path template {*} is one segment", allow(to(paths=["/reviews/{*}"])), {"path": "/reviews/1/2"}, 403),
    ("path template {**}", allow(to(paths=["/reviews/{**}"])), {"path": "/reviews/1/2"}, 200),
    ("DENY path vs ../", deny(to(paths=["/admin*"])), {"path": "/public/../admin"}, 403),
    ("DENY path vs %-escape", deny(to(paths=["/admin*"])), {"path": "/%61dmin/x"}, 403),
    ("DENY path vs ./ and backslash", deny(to(paths=["/admin*"])), {"path": "/.\\admin"}, 403),
    ("DENY path elsewhere", deny(to(paths=["/admin*"])), {"path": "/public/admin"}, 200),
    ("not_paths", allow(to(not_paths=["/private*"])), {"path": "/private/x"}, 403),
    ("ports: workload port", allow(to(ports=["9080"])), {}, 200),
    ("ports: other", allow(to(ports=["8000"])), {}, 403),
    ("not_ports", deny(to(not_ports=["9080"])), {}, 200),
    ("hosts ignore port and case", allow(to(hosts=["BOB"])), {"authority": "bob:9080"}, 200),
    ("hosts: other", allow(to(hosts=["bob.example"])), {"authority": "bob:9080"}, 403),
    ("to entries OR", allow({"to": [{"methods": ["PUT"]}, {"paths": ["/x"]}]}), {"path": "/x"}, 200),
    ("from AND to", allow({**frm(principals=[P]), **to(methods=["GET"])}), {"peer": ALICE, "method": "POST"}, 403),
    ("when header: match", allow(when("request.headers[X-Token]", ["secret"])),
     {"headers": [("x-token", "secret")]}, 200),
    ("when header: absent", allow(when("request.headers[x-token]", ["secret"])), {}, 403),
    ("when header prefix", allow(when("request.headers[x-token]", ["sec*"])), {"headers": [("x-token", "secret")]}, 200),
    ("when header not_values: absent passes", allow(when("request.headers[x-token]", not_values=["bad"])), {}, 200),
    ("when header not_values: listed", allow(when("request.headers[x-token]", not_values=["bad"])),
     {"headers": [("x-token", "bad")]}, 403),
    ("when source.principal", allow(when("source.principal", [P])), {"peer": ALICE}, 200),
    ("when source.namespace", allow(when("source.namespace", ["evil"])), {"peer": ALICE}, 403),
    ("when destination.port", allow(when("destination.port", ["9080"])), {}, 200),
    ("when source.ip", allow(when("source.ip", ["10.0.0.0/8"])), {"source": "127.0.0.1"}, 403),
    ("when conditions AND", allow({"when": [{"key": "destination.port", "values": ["9080"]},
                                            {"key": "source.namespace", "values": ["default"]}]}),
     {"peer": MALLORY}, 403),
    ("no JWT: request.auth.claims never match", allow(when("request.auth.claims[groups]", ["admin"])), {}, 403),
    ("no JWT: notRequestPrincipals * matches all", deny(frm(not_request_principals=["*"])), {"peer": ALICE}, 403),
    ("DENY wins over ALLOW", {**allow(frm(principals=[P])), **deny(to(methods=["POST"]))},
     {"peer": ALICE, "method": "POST"}, 403),
    ("ALLOW after a non-matching DENY", {**allow(frm(principals=[P])), **deny(to(methods=["POST"]))},
     {"peer": ALICE}, 200),
    ("any ALLOW policy suffices", {"allow": [{"name": "a", "rules": []},
                                            {"name": "b", "rules": [frm(principals=[P])]}]},
     {"peer": ALICE}, 200),
    ("only DENY policies: others allowed", deny(frm(principals=[P])), {"peer": BOB}, 200),
    ("only DENY policies: match denied", deny(frm(principals=[P])), {"peer": ALICE}, 403),
]


@pytest.mark.parametrize(("policies", "request_args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_authz_matrix(policies: dict[str, Any] | None, request_args: dict[str, Any], expected: int) -> None:
    assert await _status(policies, **request_args) == expected


async def test_audit_policies_log_but_never_decide(caplog: pytest.LogCaptureFixture) -> None:
    policies = {"audit": [{"name": "default/audit-posts", "rules": [to(methods=["POST"])]}]}
    with caplog.at_level(logging.INFO, logger="meshkit.proxy.filters.authz"):
        assert await _status(policies, method="POST", peer=ALICE) == 200
        assert await _status(policies, method="GET") == 200
    audits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("AUDIT")]
    assert audits == [f"AUDIT POST / from {ALICE} matched default/audit-posts"]
    with_deny = {**policies, **deny(to(methods=["POST"]))}
    assert await _status(with_deny, method="POST") == 403  # AUDIT does not rescue a DENY


async def test_dry_run_policies_log_their_shadow_result_but_never_decide(caplog: pytest.LogCaptureFixture) -> None:
    """Istio's ``istio.io/dry-run``: the DENY shadow engine denies on a match, the ALLOW one when none matches."""
    headers_deny = {"name": "foo/deny-path-headers", "rules": [to(paths=["/ip"]), to(paths=["/headers"])]}
    policies = {"dry_run_deny": [headers_deny]}
    with caplog.at_level(logging.INFO, logger="meshkit.proxy.filters.authz"):
        assert await _status(policies, path="/headers") == 200
        assert await _status(policies, path="/get") == 200
    assert [r.getMessage() for r in caplog.records if "shadow" in r.getMessage()] == [
        "rbac GET /headers: shadow denied, matched policy ns[foo]-policy[deny-path-headers]-rule[1]",
        "rbac GET /get: shadow allowed, no policy matched",
    ]
    compiled = compile_authz({"dry_run_allow": [{"name": "foo/allow-get", "rules": [to(methods=["GET"])]}]})
    assert compiled is not None and policy_names(compiled) == ["DRY-RUN ALLOW foo/allow-get"]
    post = compiled.evaluate(Request("POST", "/", "bob", Headers(), peer_identity=ALICE))
    assert post.allowed and [(s.engine, s.denied, s.policy_id) for s in post.shadows] == [
        ("istio_dry_run_allow_", True, "")]
    get = compiled.evaluate(Request("GET", "/", "bob", Headers(), peer_identity=ALICE))
    assert [(s.denied, s.policy_id) for s in get.shadows] == [(False, "ns[foo]-policy[allow-get]-rule[0]")]
    # an enforced DENY still decides next to a dry-run one
    assert await _status({**policies, **deny(to(paths=["/headers"]))}, path="/headers") == 403


@pytest.mark.parametrize(("trusted", "forwarded", "remote"), [
    (0, "5.6.7.8, 127.0.0.1", "127.0.0.1"),  # a sidecar, or a gateway trusting no one: the connection
    (1, "5.6.7.8, 127.0.0.1", "5.6.7.8"),  # the load balancer's entry (the listener appended the peer)
    (1, "1.1.1.1, 5.6.7.8, 127.0.0.1", "5.6.7.8"),  # what the client forged to the left is not trusted
    (2, "1.1.1.1, 5.6.7.8, 127.0.0.1", "1.1.1.1"),
    (2, "5.6.7.8, 127.0.0.1", "127.0.0.1"),  # fewer hops than trusted: the connection's address
])
def test_remote_ip_blocks_read_x_forwarded_for_as_far_as_hops_are_trusted(
        trusted: int, forwarded: str, remote: str) -> None:
    """Envoy with use_remote_address and xff_num_trusted_hops N: the Nth address from the right of the
    client's X-Forwarded-For, else the connection's; source.ip (ipBlocks) is always the connection's."""
    compiled = compile_authz(allow(frm(remote_ip_blocks=[remote])), trusted_hops=trusted)
    assert compiled is not None
    request = Request("GET", "/", "httpbin", Headers([("x-forwarded-for", forwarded)]), downstream_addr="127.0.0.1")
    assert compiled.evaluate(request).allowed
    other = compile_authz(allow(frm(remote_ip_blocks=["9.9.9.9"])), trusted_hops=trusted)
    assert other is not None and not other.evaluate(request).allowed
    by_source = compile_authz(allow(frm(ip_blocks=["127.0.0.1"])), trusted_hops=trusted)
    assert by_source is not None and by_source.evaluate(request).allowed


def test_decision_names_the_policy() -> None:
    compiled = compile_authz({**allow(frm(principals=[P]), name="ns/a"), **deny(to(paths=["/x"]), name="ns/d")})
    assert compiled is not None
    assert policy_names(compiled) == ["DENY ns/d", "ALLOW ns/a"]
    request = Request("GET", "/x", "bob", Headers(), peer_identity=ALICE)
    decision = compiled.evaluate(request)
    assert (decision.allowed, decision.policy, decision.reason) == (
        False, "ns/d", "rbac_access_denied_matched_policy[ns/d]"
    )
    nobody = compiled.evaluate(Request("GET", "/", "bob", Headers(), peer_identity=BOB))
    assert (nobody.allowed, nobody.reason) == (False, "rbac_access_denied_matched_policy[none]")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"custom": []}, "inbound.authz.custom: unsupported action"),
        ({"allow": [{"rules": []}]}, r"inbound.authz.allow\[0\].name: a policy needs a name"),
        (allow(frm(principal=[P])), r"allow\[0\].rules\[0\].from\[0\].principal: unsupported field"),
        (allow(to(paths="/x")), r"allow\[0\].rules\[0\].to\[0\].paths: expected a list"),
        (allow(to(ports=["http"])), r"to\[0\].ports\[0\]: 'http' is not a port number"),
        (allow(frm(ip_blocks=["10.0.0.300/8"])), r"ip_blocks\[0\]: '10.0.0.300/8' is not an IP"),
        (allow(to(paths=["/a*b"])), r"paths\[0\]: '/a\*b': '\*' is only allowed"),
        (allow(when("connection.sni", ["x"])), r"when\[0\].key: unsupported condition key 'connection.sni'"),
        (allow({"when": [{"key": "source.ip"}]}), r"when\[0\]: a condition needs values or not_values"),
        (allow({"from": [], "then": []}), r"rules\[0\].then: unsupported field"),
        ({"deny": "all"}, "inbound.authz.deny: expected a list"),
    ],
)
def test_compile_errors_name_the_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_authz(doc, port=SERVICE_PORT)


async def test_unwired_snapshot_fails_closed() -> None:
    handler = build_chain([authz], _App())
    response = await handler(Request("GET", "/", "bob", Headers(), config=object()))
    assert response.status == 500


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/", "/"),
        ("/a/b?x=/../y", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/..", "/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/%7Euser/%2e%2e/admin", "/admin"),
        ("/a%2Fb", "/a%2Fb"),  # an encoded slash stays a character, not a separator (Envoy's default)
        ("/a%2fb", "/a%2Fb"),
        ("\\a\\b", "/a/b"),
        ("http://bob:9080/x/../y", "/y"),
        ("/a#frag", "/a"),
    ],
)
def test_normalize_path(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal
