"""Gateway API (gateway.networking.k8s.io/v1) as data: HTTPRoute and GatewayClass load, compile into the
same snapshot routes as VirtualServices, carry Gateway API ``status``, and the analyzer names dangling refs.

Istio's own Gateway API samples (tests/config/istio_samples/gateway-api-*.yaml, bookinfo-versions.yaml)
load unchanged; the docs tabs' YAML (request routing, timeouts, mirroring) is written here as the
"Gateway API" tabs of istio.io show it.
"""

from __future__ import annotations

import json
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
from meshkit.proxy.http import Headers, Request
from meshkit.proxy.routing import matched_prefix
from meshkit.proxy.snapshot import Snapshot
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
    assert only["rewrite"] == {"uri": "/new", "authority": None, "uri_regex": None}


def test_rules_follow_gateway_api_precedence_exact_then_longest_prefix() -> None:
    text = route("""  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /api/v2/}}, {path: {type: Exact, value: /exact}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
    backendRefs: [{name: reviews-v3, port: 9080}]""")
    routes = routes_for(config(text))
    assert [r["match"][0]["uri"] for r in routes] == [
        {"exact": "/exact"}, {"path_separated_prefix": "/api/v2"}, {"path_separated_prefix": "/api"},
        {"prefix": "/"}]  # "/api/v2/" trimmed; Gateway API's PathPrefix matches whole segments
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
    ("  - filters: [{type: CORS, cors: {allowOrigins: ['*']}}]", "spec.rules[0].filters[0]", "not supported"),
    ("  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]",
     "spec.rules[0].filters[0].requestRedirect.statusCode", ""),
    ("""  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /n}}""",
     "spec.rules[0]", "ReplacePrefixMatch needs exactly one match with path type PathPrefix"),
    ("""  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}},
              {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /n}}}]""",
     "spec.rules[0]", "RequestRedirect or a URLRewrite filter, not both"),
    ("  - filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath}}}]",
     "spec.rules[0].filters[0].requestRedirect.path", "needs replaceFullPath"),
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
    assert uris[3:] == [{"path_separated_prefix": "/api/v1/products"}, {"path_separated_prefix": "/static"}]
    assert {d["cluster"] for r in host["routes"] for d in r["route"]} == {"productpage.default|"}
    assert all(r["source"].startswith("HTTPRoute/default/bookinfo#") for r in host["routes"])
    status = with_status(gateway, resources, bookinfo_registry())["status"]
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [("Accepted", "True"),
                                                                      ("Programmed", "True")]
    (listener,) = status["listeners"]
    assert (listener["name"], listener["attachedRoutes"], listener["supportedKinds"]) == (
        "http", 1, [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}])
    assert [(c["type"], c["status"], c["reason"]) for c in listener["conditions"]] == [
        ("Accepted", "True", "Accepted"), ("Programmed", "True", "Programmed"),
        ("ResolvedRefs", "True", "ResolvedRefs"), ("Conflicted", "False", "NoConflicts")]
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


def test_an_https_listener_needs_a_certificate_and_a_terminating_tls_listener_is_refused_by_name() -> None:
    """HTTPS listeners are served (tests/config/test_gateway_tls.py); without certificateRefs the
    listener is refused, as the Gateway API requires one; a TLS listener that terminates is not supported;
    a Passthrough one is served by the ingress (tests/config/test_gateway_api_passthrough.py) or the
    Gateway's own proxy (tests/config/test_gateway_api_egress.py)."""
    gateway = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls}
spec:
  gatewayClassName: istio
  listeners: [{name: https, port: 443, protocol: PROTOCOL, tls: {mode: Terminate}}]
"""
    [message] = errors(gateway.replace("PROTOCOL", "HTTPS"))
    assert message.field == "spec.listeners[0]" and "needs tls.certificateRefs" in message.text
    [message] = errors(gateway.replace("PROTOCOL", "TLS"))
    assert message.field == "spec.listeners[0]" and "needs tls.mode Passthrough" in message.text
    [passthrough] = load_resources(gateway.replace("PROTOCOL", "TLS").replace("Terminate", "Passthrough"))
    assert passthrough.spec.listeners[0].tls.mode == "Passthrough"  # type: ignore[attr-defined]


def test_path_prefix_compiles_to_whole_segments_and_a_virtual_service_prefix_stays_a_string() -> None:
    """Istio's gateway semantics: an HTTPRoute's PathPrefix is Envoy's path_separated_prefix; a
    VirtualService's prefix is not."""
    gamma = routes_for(config(route("""  - matches: [{path: {type: PathPrefix, value: /reviews/}}]
    backendRefs: [{name: reviews-v2, port: 9080}]""")))
    assert gamma[0]["match"][0]["uri"] == {"path_separated_prefix": "/reviews"}
    vs = routes_for(config("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /reviews/}}]
    route: [{destination: {host: reviews}}]
"""))
    assert vs[0]["match"][0]["uri"] == {"prefix": "/reviews/"}


def _redirect_of(text: str, path: str, authority: str = "reviews:9080") -> tuple[dict[str, Any], str]:
    """The compiled route's ``redirect`` and the Location the sidecar's route table makes for ``path``."""
    resources = config(text)
    snapshot = compile_snapshot(resources, bookinfo_registry(), node_for("productpage"))
    compiled = Snapshot.from_json(json.loads(json.dumps(snapshot)))
    request = Request("GET", path, authority, Headers([("x-forwarded-proto", "http")]))
    _, matched_route, matched = compiled.routes.route(request)
    assert matched_route is not None and matched_route.redirect is not None
    location = matched_route.redirect.location(request, *matched_prefix(matched))
    raw = dict(matched_route.raw)
    assert raw["route"] == []  # answered by the proxy: no destination
    return raw["redirect"], location


@pytest.mark.parametrize(("redirect", "path", "code", "location"), [
    ("{path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}", "/old/a?x=1", 302,
     "http://reviews:9080/new/a?x=1"),
    ("{path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}", "/old/a", 302, "http://reviews:9080/a"),
    ("{path: {type: ReplaceFullPath, replaceFullPath: /full}, statusCode: 301}", "/old/a?x=1", 301,
     "http://reviews:9080/full?x=1"),
    ("{scheme: https}", "/old", 302, "https://reviews/old"),  # the scheme's default port, not written
    ("{hostname: example.com}", "/old", 302, "http://example.com:9080/old"),  # the request's port
    ("{hostname: example.com, port: 8443, scheme: https}", "/old", 302, "https://example.com:8443/old"),
    ("{scheme: http, port: 80}", "/old", 302, "http://reviews/old"),
])
def test_request_redirect_becomes_a_redirect_the_sidecar_answers(
        redirect: str, path: str, code: int, location: str) -> None:
    text = route(f"""  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]
    backendRefs: [{{name: reviews-v1, port: 9080}}]""")
    compiled, made = _redirect_of(text, path)
    assert compiled["response_code"] == code
    assert made == location


def test_virtual_service_redirect_is_compiled_as_envoy_takes_it() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /v1/old}}]
    redirect: {uri: /v1/new, authority: newreviews}
  - route: [{destination: {host: reviews}}]
"""
    compiled, location = _redirect_of(text, "/v1/older?q=2")  # a VirtualService prefix is a string prefix
    assert compiled == {"scheme": None, "host": "newreviews", "port": None, "derive_port": None,
                        "path": "/v1/new", "prefix_rewrite": None, "response_code": 301}
    assert location == "http://newreviews/v1/new?q=2"
    assert analyze(config(text), bookinfo_registry()) == []  # no "route has no destinations"


@pytest.mark.parametrize(("redirect", "words"), [
    ("{uri: /x, redirectCode: 305}", "not supported"),
    ("{uri: '%PREFIX()%/x'}", "expected a path starting with '/'"),
    ("{port: 80, derivePort: FROM_REQUEST_PORT}", "exclusive"),
    ("{}", "must specify"),
])
def test_bad_virtual_service_redirects_are_refused_by_name(redirect: str, words: str) -> None:
    messages = errors(f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - redirect: {redirect}
""")
    assert any(m.field.startswith("spec.http[0].redirect") and words in m.text for m in messages), messages


def test_a_redirect_with_a_route_is_refused() -> None:
    messages = errors("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - redirect: {uri: /x}
    route: [{destination: {host: reviews}}]
""")
    assert any(m.field.startswith("spec.http[0]") and "both redirect and route" in m.text for m in messages)


def test_url_rewrite_full_path_and_hostname_follow_istios_conversion() -> None:
    text = route("""  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: backend.example, path: {type: ReplaceFullPath, replaceFullPath: /full}}
    backendRefs: [{name: reviews-v1, port: 9080}]""")
    (only,) = routes_for(config(text))
    assert only["rewrite"] == {"uri": None, "authority": "backend.example",
                               "uri_regex": {"match": "/.*", "rewrite": "/full"}}
    snapshot = compile_snapshot(config(text), bookinfo_registry(), node_for("productpage"))
    request = Request("GET", "/old/a/b?q=1", "reviews", Headers([("host", "reviews")]))
    _, matched_route, matched = Snapshot.from_json(json.loads(json.dumps(snapshot))).routes.route(request)
    assert matched_route is not None and matched_route.rewrite is not None
    matched_route.rewrite.apply(request, *matched_prefix(matched))
    assert (request.path, request.headers.get("host")) == ("/full?q=1", "backend.example")


def test_virtual_service_rewrite_authority_and_uri_regex_rewrite() -> None:
    text = vs_text("""  - match: [{uri: {prefix: /service}}]
    rewrite:
      authority: other.example
      uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: '\\2/i/\\1'}
    route: [{destination: {host: reviews}}]""")
    (first, _) = routes_for(config(text))
    assert first["rewrite"] == {"uri": None, "authority": "other.example",
                                "uri_regex": {"match": "^/service/([^/]+)(/.*)$", "rewrite": "\\2/i/\\1"}}
    (message,) = [m for m in errors(vs_text("""  - rewrite: {uriRegexRewrite: {match: "([a-", rewrite: x}}
    route: [{destination: {host: reviews}}]""")) if m.field.startswith("spec.http[0].rewrite")]
    assert "uriRegexRewrite" in message.text
    (both,) = errors(vs_text("""  - rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}
    route: [{destination: {host: reviews}}]"""))
    assert "exclusive" in both.text


def vs_text(http: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
{http}
  - route: [{{destination: {{host: reviews}}}}]
"""


def test_a_route_whose_hostnames_no_listener_accepts_is_not_accepted() -> None:
    gateway = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}]
"""
    routes = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere}
spec:
  parentRefs: [{name: web}]
  hostnames: [bookinfo.example.org]
  rules: [{backendRefs: [{name: productpage, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: here}
spec:
  parentRefs: [{name: web}]
  hostnames: [bookinfo.example.com]
  rules: [{backendRefs: [{name: productpage, port: 9080}]}]
"""
    resources = config(gateway, routes)
    by_name = {r.metadata.name: r for r in resources if isinstance(r, HTTPRoute)}
    (elsewhere,) = route_status(by_name["elsewhere"], resources, bookinfo_registry())["parents"]
    accepted = elsewhere["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "NoMatchingListenerHostname")
    assert "bookinfo.example.org" in accepted["message"]
    (here,) = route_status(by_name["here"], resources, bookinfo_registry())["parents"]
    assert (here["conditions"][0]["status"], here["conditions"][0]["reason"]) == ("True", "Accepted")
    (web,) = [r for r in resources if isinstance(r, KubeGateway)]
    assert with_status(web, resources, bookinfo_registry())["status"]["listeners"][0]["attachedRoutes"] == 1
