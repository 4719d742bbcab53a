"""istioctl's VirtualService checks (`meshkit.config.analyze_routes`): each one triggered, and a case
that must not trigger it. Texts are Istio's wording (its validation and analyzer messages)."""

from __future__ import annotations

from meshkit.config.analyze import analyze
from meshkit.config.loader import load_resources
from meshkit.config.messages import Severity
from meshkit.config.registry import RegistryView
from meshkit.config.resources import Resource
from tests.config.bookinfo import bookinfo_registry

REVIEWS_DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
"""


def load(text: str) -> list[Resource]:
    return load_resources(text)


def codes_of(resources: list[Resource], *wanted: str,
             registry: RegistryView | None = None) -> list[tuple[str, str, str, str]]:
    return [(m.code, m.severity.value, m.field, m.text) for m in analyze(resources, registry)
            if m.code in wanted]


def reviews_vs(http: str, *, hosts: str = "[reviews]", extra: str = "") -> str:
    return REVIEWS_DR + f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: {hosts}
{extra}  http:
{http}"""


# -- MK0124 / MK0125: unreachable rules and ineffective matches (IST0130 / IST0131) -------------


def test_a_rule_after_a_catch_all_is_unreachable() -> None:
    resources = load(reviews_vs("""  - route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
"""))
    assert codes_of(resources, "MK0124", "MK0125") == [
        ("MK0124", "Warning", "spec.http[1]",
         "VirtualService rule #1 not used (route without matches defined before)."),
    ]


def test_two_catch_alls_and_a_named_rule() -> None:
    resources = load(reviews_vs("""  - route: [{destination: {host: reviews, subset: v1}}]
  - name: fallback
    route: [{destination: {host: reviews, subset: v2}}]
"""))
    assert codes_of(resources, "MK0124") == [
        ("MK0124", "Warning", "spec.http[1]",
         'VirtualService rule "fallback" not used (only the last rule can have no matches).'),
    ]


def test_the_same_match_twice() -> None:
    resources = load(reviews_vs("""  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match:
    - {name: again, headers: {end-user: {exact: jason}}}
    - uri: {prefix: /reviews}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""))
    assert codes_of(resources, "MK0124", "MK0125") == [
        ("MK0125", "Info", "spec.http[1].match",
         'VirtualService rule #1 match "again" is not used (duplicate/overlapping match in rule #0).'),
        ("MK0124", "Warning", "spec.http[2]",
         "VirtualService rule #2 not used (all matches used by prior rules)."),
        ("MK0125", "Info", "spec.http[2].match",
         "VirtualService rule #2 match #0 is not used (duplicate/overlapping match in rule #0)."),
    ]
    assert all(m.severity != Severity.ERROR for m in analyze(resources))  # never blocks an apply


def test_a_longer_prefix_after_a_shorter_one_is_covered() -> None:
    resources = load(reviews_vs("""  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: reviews, subset: v2}}]
"""))
    assert codes_of(resources, "MK0125") == [
        ("MK0125", "Info", "spec.http[1].match",
         "VirtualService rule #1 match #0 of prefix /api/v2 is not used (duplicate/overlapping match in rule "
         "#0 of prefix /api on #0)."),
    ]


def test_the_first_covering_prefix_of_another_rule_is_named() -> None:
    resources = load(reviews_vs("""  - match: [{uri: {prefix: /api/v}}, {uri: {prefix: /api/v2/x}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /ap}}, {uri: {prefix: /api/v2/x/y}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /api/v2/x/y/z}}]
    route: [{destination: {host: reviews, subset: v3}}]
"""))
    # /api/v2/x/y is covered by /api/v (seen first), not only by /api/v2/x; its own rule's /ap does
    # not count for it; /api/v2/x/y/z is covered by all three earlier ones: /api/v is named
    assert codes_of(resources, "MK0125") == [
        ("MK0125", "Info", "spec.http[1].match",
         "VirtualService rule #1 match #1 of prefix /api/v2/x/y is not used (duplicate/overlapping match in "
         "rule #0 of prefix /api/v on #0)."),
        ("MK0125", "Info", "spec.http[2].match",
         "VirtualService rule #2 match #0 of prefix /api/v2/x/y/z is not used (duplicate/overlapping match "
         "in rule #0 of prefix /api/v on #0)."),
    ]


def test_specific_rules_first_and_one_catch_all_last_are_clean() -> None:
    resources = load(reviews_vs("""  - match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /api}, headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""))
    assert analyze(resources) == []


# -- MK0126 / MK0127: hosts -----------------------------------------------------------------------


def test_wildcard_host_on_a_mesh_virtual_service() -> None:
    route = "  - route: [{destination: {host: reviews, subset: v1}}]\n"
    assert codes_of(load(reviews_vs(route, hosts='["*"]')), "MK0126") == [
        ("MK0126", "Error", "spec.hosts[0]",
         "wildcard host * is not allowed for virtual services bound to the mesh gateway (bind it to a "
         "Gateway with `gateways:`, or name the service)"),
    ]
    on_mesh_too = reviews_vs(route, hosts='["*"]', extra="  gateways: [gw, mesh]\n")
    assert [c for c, *_ in codes_of(load(on_mesh_too), "MK0126")] == ["MK0126"]
    # the same host on a gateway only (Bookinfo's ingress VirtualService) is valid
    gateway = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
"""
    assert analyze(load(gateway + reviews_vs(route, hosts='["*"]', extra="  gateways: [gw]\n"))) == []


def test_duplicate_hosts_in_one_virtual_service() -> None:
    route = "  - route: [{destination: {host: reviews, subset: v1}}]\n"
    assert codes_of(load(reviews_vs(route, hosts="[reviews, Reviews]")), "MK0127") == [
        ("MK0127", "Error", "spec.hosts[1]", "duplicate hosts in virtual service: reviews & Reviews"),
    ]
    wildcards = load(reviews_vs(route, hosts='["*.example.com", api.example.com]'))
    assert [f for _, _, f, _ in codes_of(wildcards, "MK0127")] == ["spec.hosts[1]"]
    assert analyze(load(reviews_vs(route, hosts="[reviews, reviews.other]"))) == []


# -- MK0134 / MK0135 / MK0136: VirtualServices bound to Gateways -----------------------------------

TESTING_GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: testing-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [testing.com, "*.example.com"]
---
"""


def _testing_vs(name: str, hosts: str) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  gateways: [istio-system/testing-gateway]
  hosts: {hosts}
  http:
  - match: [{{uri: {{prefix: /}}}}]
    route: [{{destination: {{host: ratings}}}}]
---
"""


def test_a_host_the_bound_gateway_does_not_expose() -> None:
    resources = load(TESTING_GATEWAY + _testing_vs("testing-service", "[wrong.com, testing.com]"))
    assert codes_of(resources, "MK0134") == [
        ("MK0134", "Warning", "spec.gateways[0]",
         "one or more host [wrong.com] defined in VirtualService default/testing-service not found in "
         "Gateway istio-system/testing-gateway."),
    ]
    exposed = load(TESTING_GATEWAY + _testing_vs("testing-service", "[testing.com, api.example.com]"))
    assert analyze(exposed) == []


def test_two_virtual_services_claim_one_host_on_a_gateway() -> None:
    resources = load(TESTING_GATEWAY + _testing_vs("a", "[testing.com]") + _testing_vs("b", "[testing.com]"))
    [(code, severity, field, text)] = codes_of(resources, "MK0135")
    assert (code, severity, field) == ("MK0135", "Warning", "spec.hosts[0]")
    assert text == ("The VirtualServices default/a,default/b associated with gateway "
                    "istio-system/testing-gateway define the same host testing.com which can lead to "
                    "undefined behavior (meshkit uses VirtualService/default/a). This can be fixed by "
                    "merging the conflicting VirtualServices into a single resource.")
    other_host = _testing_vs("b", "[api.example.com]")
    different = load(TESTING_GATEWAY + _testing_vs("a", "[testing.com]") + other_host)
    assert analyze(different) == []


def _claims_on_gateway(authentication: str) -> list[Resource]:
    return load(authentication + TESTING_GATEWAY + """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [testing.com]
  gateways: [istio-system/testing-gateway]
  http:
  - match: [{headers: {"@request.auth.claims.groups": {exact: group1}}}]
    route: [{destination: {host: httpbin}}]
""")


def test_claim_routes_need_a_request_authentication_on_the_gateway() -> None:
    [(code, severity, field, text)] = codes_of(_claims_on_gateway(""), "MK0136")
    assert (code, severity, field) == ("MK0136", "Warning", "spec.gateways[0]")
    assert text.startswith("The virtual service uses the JWT claim based routing (key: groups) but found no "
                           "request authentication for the gateway (istio-system/testing-gateway) pod")
    other_workload = """apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {app: productpage}}
  jwtRules: [{issuer: me, jwksUri: "http://127.0.0.1:1/jwks.json"}]
---
"""
    assert [c for c, *_ in codes_of(_claims_on_gateway(other_workload), "MK0136")] == ["MK0136"]
    on_gateway = other_workload.replace("app: productpage", "istio: ingressgateway")
    assert analyze(_claims_on_gateway(on_gateway)) == []


# -- MK0137 / MK0138: delegates ------------------------------------------------------------------

ROOT = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /reviews}}]
    delegate: {name: reviews-delegate, namespace: team}
  - route: [{destination: {host: reviews}}]
---
"""
DELEGATE = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-delegate, namespace: team}
spec:
  http:
  - match: [{uri: {prefix: /reviews/v2}}]
    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]
  - route: [{destination: {host: reviews.default.svc.cluster.local, subset: v1}}]
"""


def test_delegates_are_understood() -> None:
    # a root with a delegate rule (no route of its own) and a delegate without hosts: nothing to report
    assert analyze(load(REVIEWS_DR + ROOT + DELEGATE), bookinfo_registry()) == []


def test_a_missing_delegate_is_named() -> None:
    assert codes_of(load(REVIEWS_DR + ROOT), "MK0137", "MK0116") == [
        ("MK0137", "Warning", "spec.http[0].delegate.name",
         'Referenced delegate virtual service not found: "team/reviews-delegate" (requests matching this '
         "rule get 404 until it is applied)"),
    ]


def test_delegates_misused() -> None:
    with_route = ROOT.replace("delegate: {name: reviews-delegate, namespace: team}",
                              "delegate: {name: reviews-delegate, namespace: team}\n"
                              "    route: [{destination: {host: reviews}}]")
    bad_delegate = DELEGATE.replace("spec:\n", "spec:\n  gateways: [gw]\n", 1)
    found = codes_of(load(REVIEWS_DR + with_route + bad_delegate), "MK0138")
    assert [(c, s, f) for c, s, f, _ in found] == [
        ("MK0138", "Error", "spec.http[0].delegate"),
        ("MK0138", "Error", "spec.gateways"),
    ]
    assert found[0][3].startswith("http delegate and route/mirror cannot be set together")
    assert found[1][3].startswith("delegate virtual service must have no gateways specified")
    has_hosts = DELEGATE.replace("spec:\n", "spec:\n  hosts: [other]\n", 1)
    [(_, _, field, text)] = codes_of(load(REVIEWS_DR + ROOT + has_hosts), "MK0138")
    assert field == "spec.http[0].delegate.name"
    assert text.startswith("VirtualService/team/reviews-delegate has hosts, so it is not a delegate")
