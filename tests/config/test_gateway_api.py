"""Gateway API (gateway.networking.k8s.io/v1) as data: HTTPRoute and GatewayClass load, compile into the
same snapshot routes as VirtualServices, carry Gateway API ``status``, and the analyzer names dangling refs.

Istio's own Gateway API samples (tests/config/istio_samples/gateway-api-*.yaml, bookinfo-versions.yaml)
load unchanged; the docs tabs' YAML (request routing, timeouts, mirroring) is written here as the
"Gateway API" tabs of istio.io show it.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.gateway_api import HTTPRoute, KubeGateway
from meshkit.config.httproutes import route_status, with_status
from meshkit.config.loader import load_files, load_resources
from meshkit.config.messages import ConfigError, Message
from meshkit.config.registry import Node
from meshkit.config.resources import Resource
from tests.config.bookinfo import SAMPLES, bookinfo_registry, node_for

# istio.io, Tasks > Traffic Management > Request Routing, "Gateway API" tab (user jason -> v2)
JASON_V2 = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - matches:
    - headers:
      - name: end-user
        value: jason
    backendRefs:
    - name: reviews-v2
      port: 9080
  - backendRefs:
    - name: reviews-v1
      port: 9080
"""

# istio.io, Tasks > Traffic Management > Request Timeouts, "Gateway API" tab
TIMEOUT = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - backendRefs:
    - name: reviews-v2
      port: 9080
    timeouts:
      request: 500ms
"""


def route(text: str) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews}}
spec:
  parentRefs: [{{group: "", kind: Service, name: reviews, port: 9080}}]
  rules:
{text}"""


def config(*texts: str) -> list[Resource]:
    resources = load_files([SAMPLES / "bookinfo.yaml", SAMPLES / "bookinfo-versions.yaml"])
    for text in texts:
        resources.extend(load_resources(text))
    return resources


def reviews_host(snapshot: dict[str, Any]) -> dict[str, Any]:
    (host,) = [h for h in snapshot["outbound"]["virtual_hosts"] if h["service"] == "reviews"]
    return host


def routes_for(resources: list[Resource]) -> list[dict[str, Any]]:
    """The reviews routes productpage's sidecar gets."""
    routes: list[dict[str, Any]] = reviews_host(
        compile_snapshot(resources, bookinfo_registry(), node_for("productpage")))["routes"]
    return routes


def errors(text: str) -> list[Message]:
    with pytest.raises(ConfigError) as caught:
        load_resources(text)
    return caught.value.messages


def test_istio_gateway_api_samples_load_unchanged() -> None:
    resources = load_files([*sorted(SAMPLES.glob("gateway-api-*.yaml")), SAMPLES / "bookinfo-versions.yaml"])
    routes = [r for r in resources if isinstance(r, HTTPRoute)]
    assert {r.metadata.name for r in routes} == {"reviews", "productpage", "ratings", "details", "bookinfo"}
    assert routes[0].api_version == "gateway.networking.k8s.io/v1"


def test_per_version_services_become_clusters_of_the_endpoints_they_select() -> None:
    snapshot = compile_snapshot(config(), bookinfo_registry(), node_for("productpage"))
    clusters = snapshot["clusters"]
    assert [e["instance"] for e in clusters["reviews-v1.default|"]["endpoints"]] == ["reviews-v1-0"]
    assert [e["instance"] for e in clusters["reviews-v3.default|"]["endpoints"]] == ["reviews-v3-0"]
    assert clusters["reviews-v1.default|"]["tls"]["mode"] == "ISTIO_MUTUAL"
    assert sorted(e["instance"] for e in clusters["reviews.default|"]["endpoints"]) == [
        "reviews-v1-0", "reviews-v2-0", "reviews-v3-0"]


def test_request_routing_tab_jason_to_v2_everybody_else_v1() -> None:
    snapshot = compile_snapshot(config(JASON_V2), bookinfo_registry(), node_for("productpage"))
    routes = reviews_host(snapshot)["routes"]
    assert [r["route"][0]["cluster"] for r in routes] == ["reviews-v2.default|", "reviews-v1.default|"]
    assert routes[0]["match"][0]["headers"] == {"end-user": {"exact": "jason"}}
    assert routes[0]["source"] == "HTTPRoute/default/reviews#http[0]"
    assert routes[1]["match"] == []  # no matches: every request


def test_traffic_shifting_sample_splits_by_weight() -> None:
    resources = config() + load_files([SAMPLES / "gateway-api-route-reviews-50-v3.yaml"])
    (only,) = routes_for(resources)
    assert [(d["cluster"], d["weight"]) for d in only["route"]] == [("reviews-v1.default|", 50),
                                                                     ("reviews-v3.default|", 50)]


def test_timeouts_tab_sets_the_route_timeout_and_backend_request_the_per_try_timeout() -> None:
    (only,) = routes_for(config(TIMEOUT))
    assert only["timeout_ms"] == 500
    text = route("""  - backendRefs: [{name: reviews-v2, port: 9080}]
    timeouts: {request: 2s, backendRequest: 500ms}""")
    (only,) = routes_for(config(text))
    assert (only["timeout_ms"], only["retries"]["per_try_timeout_ms"]) == (2000, 500)


def test_filters_become_header_mirror_and_rewrite_settings() -> None:
    text = route("""  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Env, value: test}]
        add: [{name: X-Tag, value: a}]
        remove: [X-Drop]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: X-Served-By, value: mesh}]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: reviews-v3, port: 9080}, percent: 25}
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    backendRefs: [{name: reviews-v1, port: 9080}]""")
    (only,) = routes_for(config(text))
    assert only["headers"]["request"] == {"set": {"x-env": "test"}, "add": {"x-tag": "a"},
                                          "remove": ["x-drop"]}
    assert only["headers"]["response"]["set"] == {"x-served-by": "mesh"}
    assert only["mirror"] == {"cluster": "reviews-v3.default|", "percent": 25.0}
    assert only["rewrite"] == {"uri": "/new"}


def test_rules_follow_gateway_api_precedence_exact_then_longest_prefix() -> None:
    text = route("""  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /api/v2/}}, {path: {type: Exact, value: /exact}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
    backendRefs: [{name: reviews-v3, port: 9080}]""")
    routes = routes_for(config(text))
    assert [r["match"][0]["uri"] for r in routes] == [
        {"exact": "/exact"}, {"prefix": "/api/v2"}, {"prefix": "/api"}, {"prefix": "/"}]  # "/api/v2/" trimmed
    assert routes[2]["match"][0]["method"] == {"exact": "POST"}


def test_an_httproute_wins_over_a_virtual_service_for_the_same_service() -> None:
    resources = config(JASON_V2) + load_files([SAMPLES / "virtual-service-all-v1.yaml"])
    routes = routes_for(resources)
    assert routes[0]["source"].startswith("HTTPRoute/default/reviews")
    notes = [m for m in analyze(resources, bookinfo_registry()) if m.code == "MK0413"]
    assert [(m.resource, m.field) for m in notes] == [("HTTPRoute/default/reviews", "spec.parentRefs[0]")]
    assert analyze(config(JASON_V2), bookinfo_registry()) == []


def test_status_says_accepted_and_resolved_or_backend_not_found() -> None:
    resources = config(JASON_V2)
    (reviews,) = [r for r in resources if isinstance(r, HTTPRoute)]
    (parent,) = route_status(reviews, resources, bookinfo_registry())["parents"]
    assert parent["controllerName"] == "istio.io/gateway-controller"
    assert [(c["type"], c["status"], c["reason"]) for c in parent["conditions"]] == [
        ("Accepted", "True", "Accepted"), ("ResolvedRefs", "True", "ResolvedRefs")]
    missing = config(route("  - backendRefs: [{name: reviews-v9, port: 9080}]"))
    (bad,) = [r for r in missing if isinstance(r, HTTPRoute)]
    doc = with_status(bad, missing, bookinfo_registry())
    (parent,) = doc["status"]["parents"]
    resolved = parent["conditions"][1]
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
    assert "default/reviews-v9" in resolved["message"]


def test_analyze_names_a_parent_ref_to_nothing_and_a_missing_backend() -> None:
    text = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: typo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviewz}, {name: no-such-gateway}]
  rules:
  - backendRefs: [{name: reviews-v9, port: 9080}]
"""
    found = [(m.code, m.resource, m.field) for m in analyze(config(text), bookinfo_registry())]
    assert found == [
        ("MK0410", "HTTPRoute/default/typo", "spec.parentRefs[0].name"),
        ("MK0410", "HTTPRoute/default/typo", "spec.parentRefs[1].name"),
        ("MK0411", "HTTPRoute/default/typo", "spec.rules[0].backendRefs[0].name"),
    ]
    # a route attached to nothing changes no snapshot
    plain = compile_snapshot(config(), bookinfo_registry(), node_for("productpage"))
    assert compile_snapshot(config(text), bookinfo_registry(), node_for("productpage"))["outbound"] == plain[
        "outbound"]


def test_fault_injection_has_no_gateway_api_form() -> None:
    (message,) = errors(route("""  - filters: [{type: FaultInjection}]
    backendRefs: [{name: reviews-v1, port: 9080}]"""))
    assert message.resource == "HTTPRoute/default/reviews"
    assert message.field.startswith("spec.rules[0].filters[0]")
    assert "does not exist in Gateway API" in message.text and "no fault injection" in message.text


@pytest.mark.parametrize(("rule", "field", "words"), [
    ("  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]", "spec.rules[0].filters[0]",
     "not supported"),
    ("  - retry: {attempts: 3}", "spec.rules[0].retry", "not supported"),
    ("  - filters: [{type: Bogus}]", "spec.rules[0].filters[0]", "does not exist"),
    ("  - filters: [{type: RequestMirror}]", "spec.rules[0].filters[0]", "requestMirror"),
])
def test_unsupported_and_unknown_fields_are_refused_by_name(rule: str, field: str, words: str) -> None:
    messages = errors(route(rule))
    assert any(m.field.startswith(field) and words in m.text for m in messages), messages


def test_gateway_class_istio_is_accepted() -> None:
    (gateway_class,) = load_resources("""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
""")
    doc = with_status(gateway_class, [gateway_class], bookinfo_registry())
    assert doc["status"]["conditions"][0]["status"] == "True"
    assert analyze([gateway_class]) == []


INGRESS = Node("istio-ingressgateway-0", namespace="istio-system", kind="gateway",
               labels={"app": "istio-ingressgateway", "istio": "ingressgateway"})


def test_ingress_tab_gateway_and_route_serve_bookinfo_at_the_ingress() -> None:
    resources = config() + load_files([SAMPLES / "gateway-api-bookinfo-gateway.yaml"])
    (gateway,) = [r for r in resources if isinstance(r, KubeGateway)]
    assert gateway.key == ("Gateway.gateway.networking.k8s.io", "default", "bookinfo-gateway")
    snapshot = compile_snapshot(resources, bookinfo_registry(), INGRESS)
    (host,) = snapshot["outbound"]["virtual_hosts"]
    assert host["domains"] == ["*"]
    uris = [r["match"][0]["uri"] for r in host["routes"]]
    # Exact paths first (they never overlap), then the longest prefix
    assert sorted(u["exact"] for u in uris[:3]) == ["/login", "/logout", "/productpage"]
    assert uris[3:] == [{"prefix": "/api/v1/products"}, {"prefix": "/static"}]
    assert {d["cluster"] for r in host["routes"] for d in r["route"]} == {"productpage.default|"}
    assert all(r["source"].startswith("HTTPRoute/default/bookinfo#") for r in host["routes"])
    status = with_status(gateway, resources, bookinfo_registry())["status"]
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [("Accepted", "True"),
                                                                      ("Programmed", "True")]
    assert status["listeners"] == [{"name": "http", "attachedRoutes": 1, "supportedKinds": [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]}]
    assert analyze(resources, bookinfo_registry()) == []
    # sidecars do not get the ingress route
    assert all(h["domains"] != ["*"] for h in compile_snapshot(
        resources, bookinfo_registry(), node_for("productpage"))["outbound"]["virtual_hosts"])


def test_istio_and_gateway_api_gateways_of_one_name_live_side_by_side() -> None:
    resources = config() + load_files([SAMPLES / "bookinfo-gateway.yaml",
                                       SAMPLES / "gateway-api-bookinfo-gateway.yaml"])
    gateways = sorted(r.key for r in resources if r.kind == "Gateway")
    assert gateways == [("Gateway", "default", "bookinfo-gateway"),
                        ("Gateway.gateway.networking.k8s.io", "default", "bookinfo-gateway")]
    assert [m.code for m in analyze(resources, bookinfo_registry()) if m.code == "MK0114"] == []
    # the host both claim: the HTTPRoute's rules serve it
    (host,) = compile_snapshot(resources, bookinfo_registry(), INGRESS)["outbound"]["virtual_hosts"]
    assert host["routes"][0]["source"].startswith("HTTPRoute/")


def test_a_gateway_of_another_class_serves_nothing_and_is_named() -> None:
    other = load_resources("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other}
spec:
  gatewayClassName: nginx
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: via-other}
spec:
  parentRefs: [{name: other}]
  rules: [{backendRefs: [{name: productpage, port: 9080}]}]
""")
    resources = config() + other
    assert compile_snapshot(resources, bookinfo_registry(), INGRESS)["outbound"]["virtual_hosts"] == []
    found = [(m.code, m.resource, m.field) for m in analyze(resources, bookinfo_registry())]
    assert found == [
        ("MK0412", "Gateway.gateway.networking.k8s.io/default/other", "spec.gatewayClassName"),
        ("MK0412", "HTTPRoute/default/via-other", "spec.parentRefs[0]"),
    ]


def test_https_listeners_are_refused_by_name() -> None:
    messages = errors("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls}
spec:
  gatewayClassName: istio
  listeners: [{name: https, port: 443, protocol: HTTPS, tls: {mode: Terminate}}]
""")
    fields = {m.field for m in messages}
    assert "spec.listeners[0].protocol" in fields and "spec.listeners[0].tls" in fields, messages
    assert all("not supported by meshkit" in m.text for m in messages), messages
