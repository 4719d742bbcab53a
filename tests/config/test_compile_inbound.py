"""compile_snapshot, inbound side: PeerAuthentication precedence, the app, AuthorizationPolicy split."""

from __future__ import annotations

from typing import Any

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.registry import Node
from tests.config.bookinfo import bookinfo_registry, node_for, sample

PRODUCTPAGE = node_for("productpage")


def snap(resources: list[Any], node: Node = PRODUCTPAGE) -> dict[str, Any]:
    return compile_snapshot(resources, bookinfo_registry(), node)


def _pa(name: str, namespace: str, spec: str) -> str:
    return (
        f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )


def mtls(resources_text: str, node: Node = PRODUCTPAGE) -> dict[str, Any]:
    resources = load_resources(resources_text) if resources_text else []
    return snap(resources, node)["inbound"]["mtls"]


def test_peer_authentication_precedence() -> None:
    mesh_strict = _pa("default", "istio-system", "{mtls: {mode: STRICT}}")
    ns_permissive = _pa("default", "default", "{mtls: {mode: PERMISSIVE}}")
    ns_unset = _pa("default", "default", "{mtls: {mode: UNSET}}")
    workload_disable = _pa(
        "pp", "default", "{selector: {matchLabels: {app: productpage}}, mtls: {mode: DISABLE}}"
    )
    other_workload = _pa("rv", "default", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}")
    other_namespace = _pa("default", "foo", "{mtls: {mode: DISABLE}}")
    assert mtls("") == {"mode": "PERMISSIVE", "port_level": {}}
    assert mtls(mesh_strict) == {"mode": "STRICT", "port_level": {}}
    assert mtls(mesh_strict + ns_permissive)["mode"] == "PERMISSIVE"
    assert mtls(mesh_strict + ns_unset)["mode"] == "STRICT"
    assert mtls(mesh_strict + ns_permissive + workload_disable)["mode"] == "DISABLE"
    assert mtls(mesh_strict + other_workload + other_namespace)["mode"] == "STRICT"
    port_level = _pa(
        "pp",
        "default",
        "{selector: {matchLabels: {app: productpage}}, "
        "portLevelMtls: {9080: {mode: DISABLE}, 9443: {mode: UNSET}}}",
    )
    assert mtls(mesh_strict + port_level) == {
        "mode": "STRICT",
        "port_level": {"9080": "DISABLE", "9443": "STRICT"},
    }
    ns_port_level = _pa(
        "default", "default", "{mtls: {mode: STRICT}, portLevelMtls: {9080: {mode: DISABLE}}}"
    )
    assert mtls(ns_port_level) == {"mode": "STRICT", "port_level": {}}  # port-level needs a workload selector


def test_peer_authentication_samples() -> None:
    resources = sample("peer-authentication-port-level")
    finance = Node("finance-0", namespace="foo", labels={"app": "finance"}, app_port=8080)
    assert snap(resources, finance)["inbound"]["mtls"] == {
        "mode": "STRICT",
        "port_level": {"8080": "DISABLE"},
    }
    other = Node("web-0", namespace="foo", labels={"app": "web"})
    assert snap(resources, other)["inbound"]["mtls"] == {"mode": "STRICT", "port_level": {}}


def test_inbound_app_and_ports() -> None:
    inbound = snap([], node_for("reviews", "v1"))["inbound"]
    assert inbound == {
        "app": {"address": "127.0.0.1", "port": 9080},
        "service_port": 9080,
        "mtls": {"mode": "PERMISSIVE", "port_level": {}},
        "authz": {"deny": [], "allow": [], "audit": []},
        "rate_limit": None,
        "protocol": "http",
    }
    gateway = Node("ingress-0", namespace="istio-system", labels={"istio": "ingressgateway"}, kind="gateway")
    snapshot = snap([], gateway)
    assert snapshot["inbound"]["app"] is None and snapshot["inbound"]["service_port"] is None
    assert snapshot["node"]["service"] is None and snapshot["node"]["version"] is None


def test_authorization_policies_split_by_action() -> None:
    bookinfo = sample("authorization-policy-bookinfo")
    authz = snap(bookinfo, PRODUCTPAGE)["inbound"]["authz"]
    assert authz["deny"] == [] and authz["audit"] == []
    assert authz["allow"] == [
        {"name": "default/allow-nothing", "rules": []},
        {
            "name": "default/productpage-viewer",
            "rules": [
                {
                    "from": [],
                    "when": [],
                    "to": [
                        {
                            "hosts": [],
                            "not_hosts": [],
                            "methods": ["GET"],
                            "not_methods": [],
                            "paths": [],
                            "not_paths": [],
                            "ports": [],
                            "not_ports": [],
                        }
                    ],
                }
            ],
        },
    ]
    details = snap(bookinfo, node_for("details"))["inbound"]["authz"]["allow"]
    assert [p["name"] for p in details] == ["default/allow-nothing", "default/details-viewer"]
    assert details[1]["rules"][0]["from"] == [
        {
            "principals": ["cluster.local/ns/default/sa/bookinfo-productpage"],
            "not_principals": [],
            "namespaces": [],
            "not_namespaces": [],
            "ip_blocks": [],
            "not_ip_blocks": [],
            "remote_ip_blocks": [],
            "not_remote_ip_blocks": [],
            "request_principals": [],
            "not_request_principals": [],
        }
    ]
    httpbin = sample("authorization-policy-httpbin-deny")
    v1 = Node("httpbin-v1-0", namespace="foo", labels={"app": "httpbin", "version": "v1"}, app_port=8000)
    authz = snap(httpbin, v1)["inbound"]["authz"]
    assert [p["name"] for p in authz["deny"]] == ["foo/deny-method-get"]
    assert authz["deny"][0]["rules"][0]["when"] == [
        {"key": "request.headers[x-token]", "values": [], "not_values": ["admin"]}
    ]
    assert [p["name"] for p in authz["allow"]] == ["foo/httpbin"]
    assert authz["allow"][0]["rules"][0]["to"][0]["not_ports"] == ["9090"]
    assert len(authz["allow"][0]["rules"][0]["from"]) == 2
    assert [p["name"] for p in authz["audit"]] == ["foo/audit-headers"]
    ip_rule = load_resources(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ips, namespace: foo}\n"
        "spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/8], "
        "notRemoteIpBlocks: [10.1.0.0/16]}}], to: [{operation: {hosts: [httpbin.foo]}}]}]}\n"
    )
    (rule,) = snap(ip_rule, v1)["inbound"]["authz"]["deny"][0]["rules"]
    assert (rule["from"][0]["ip_blocks"], rule["from"][0]["not_remote_ip_blocks"]) == (
        ["10.0.0.0/8"],
        ["10.1.0.0/16"],
    )
    assert rule["to"][0]["hosts"] == ["httpbin.foo"]
    v2 = Node("httpbin-v2-0", namespace="foo", labels={"app": "httpbin", "version": "v2"})
    assert snap(httpbin, v2)["inbound"]["authz"]["allow"] == []  # the ALLOW policy selects version v1 only
    elsewhere = Node("httpbin-v1-0", namespace="bar", labels={"app": "httpbin", "version": "v1"})
    assert snap(httpbin, elsewhere)["inbound"]["authz"] == {"deny": [], "allow": [], "audit": []}
    root = load_resources(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: deny-all-posts, namespace: istio-system}\n"
        "spec: {action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}\n"
    )
    assert [p["name"] for p in snap(root, v1)["inbound"]["authz"]["deny"]] == ["istio-system/deny-all-posts"]


def test_dry_run_policies_are_shadow_only() -> None:
    """``istio.io/dry-run: "true"`` (the Dry Run task): the policy goes to dry_run_<action>, unenforced."""
    text = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-path-headers
  namespace: default
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels:
      app: productpage
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"""
    authz = snap(load_resources(text))["inbound"]["authz"]
    assert authz["deny"] == [] and authz["allow"] == []
    assert [p["name"] for p in authz["dry_run_deny"]] == ["default/deny-path-headers"]
    enforced = snap(load_resources(text.replace('"true"', '"false"')))["inbound"]["authz"]
    assert [p["name"] for p in enforced["deny"]] == ["default/deny-path-headers"]
    assert "dry_run_deny" not in enforced
