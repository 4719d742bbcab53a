"""The analyzer: every check, with its exact message, code, severity and field path."""

from __future__ import annotations

from meshkit.config.analyze import analyze
from meshkit.config.loader import load_resources
from meshkit.config.messages import Message, Severity
from meshkit.config.registry import Endpoint, RegistryView, Service
from meshkit.config.resources import Resource
from tests.config.bookinfo import bookinfo_registry, sample, vs

REVIEWS_DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""


# These fixtures list independent rules in one VirtualService, several without a match: the finding
# that the later ones are unreachable (MK0124, Istio's IST0130) is left out here and checked by
# tests/config/test_analyze_routes.py.
UNREACHABLE = "MK0124"


def found(resources: list[Resource], registry: RegistryView | None = None) -> list[tuple[str, str, str, str]]:
    return [(m.code, m.severity.value, m.field, m.text) for m in analyze(resources, registry)
            if m.code != UNREACHABLE]


def load(*texts: str) -> list[Resource]:
    return load_resources("\n---\n".join(texts))


def test_bookinfo_samples_are_clean() -> None:
    for names in (
        ("virtual-service-all-v1", "destination-rule-all"),
        ("virtual-service-reviews-test-v2", "destination-rule-all-mtls"),
        ("virtual-service-reviews-80-20", "destination-rule-all"),
        ("virtual-service-reviews-50-v3", "destination-rule-all"),
        ("virtual-service-ratings-test-delay", "destination-rule-all"),
        ("virtual-service-ratings-test-abort", "destination-rule-all"),
        ("httpbin-mirroring",),
        ("httpbin-circuit-breaker", "peer-authentication-strict-mesh", "authorization-policy-bookinfo"),
    ):
        assert analyze(sample(*names)) == [], names


def test_undefined_subset_lists_known_subsets() -> None:
    resources = load(REVIEWS_DR, vs("  - route:\n    - destination: {host: reviews, subset: v4}\n"))
    (message,) = analyze(resources)
    assert message == Message(
        "MK0101",
        Severity.ERROR,
        "VirtualService/default/reviews",
        "spec.http[0].route[0].destination.subset",
        'subset "v4" of host "reviews" is not defined by any DestinationRule (known subsets: v1, v2, v3)',
    )


def test_undefined_subset_without_any_destination_rule_and_for_mirror() -> None:
    resources = load(
        vs(
            "  - route:\n    - destination: {host: httpbin}\n    mirror: {host: httpbin, subset: v2}\n",
            name="httpbin",
            hosts="[httpbin]",
        )
    )
    assert found(resources) == [
        (
            "MK0101",
            "Error",
            "spec.http[0].mirror.subset",
            'subset "v2" of host "httpbin" is not defined by any DestinationRule (known subsets: none)',
        )
    ]


def test_subset_lookup_understands_host_spellings() -> None:
    resources = load(
        REVIEWS_DR,
        vs(
            "  - route:\n    - destination: {host: reviews.default.svc.cluster.local, subset: v2}\n",
            hosts="[reviews.default]",
        ),
    )
    assert analyze(resources) == []
    other_namespace = load(
        REVIEWS_DR, vs("  - route:\n    - destination: {host: reviews, subset: v2}\n", namespace="prod")
    )
    assert [m.code for m in analyze(other_namespace)] == ["MK0101"]  # reviews.prod has no DestinationRule


def test_weights_as_istio_accepts_them_with_the_effective_split() -> None:
    resources = load(
        REVIEWS_DR,
        vs("""  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 10
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 100
  - route:
    - destination: {host: reviews, subset: v1}
    - destination: {host: reviews, subset: v2}
"""),
    )
    proportional = "(traffic is split in proportion to the weights)"
    assert found(resources) == [
        ("MK0122", "Warning", "spec.http[0].route",
         f"route weights sum to 90: v1 gets 88.9%, v2 11.1% {proportional}"),
        ("MK0122", "Warning", "spec.http[1].route[0].weight",
         "weight 50 has no effect: the only destination gets all traffic"),
        ("MK0102", "Error", "spec.http[3].route",
         "route weights sum to 0: no destination would receive traffic "
         "(Istio: total destination weight = 0)"),
    ]
    assert [m.severity.value for m in analyze(resources)].count("Error") == 1


def test_negative_weights_and_splits_across_hosts() -> None:
    resources = load(
        REVIEWS_DR,
        vs("""  - route:
    - destination: {host: reviews, subset: v1}
      weight: -10
    - destination: {host: reviews, subset: v2}
      weight: 110
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 1
    - destination: {host: ratings}
      weight: 2
"""),
    )
    assert found(resources) == [
        ("MK0102", "Error", "spec.http[0].route[0].weight", "weight -10 is negative"),
        ("MK0122", "Warning", "spec.http[1].route",
         "route weights sum to 3: reviews v1 gets 33.3%, ratings 66.7% "
         "(traffic is split in proportion to the weights)"),
    ]


def test_destination_host_not_in_registry_only_with_registry() -> None:
    resources = load(
        vs("  - route:\n    - destination: {host: ratingz}\n", name="ratings", hosts="[ratings]")
    )
    assert analyze(resources) == []
    assert found(resources, bookinfo_registry()) == [
        (
            "MK0103",
            "Warning",
            "spec.http[0].route[0].destination.host",
            'host "ratingz" is not a service in the registry',
        ),
    ]


def test_two_virtual_services_for_one_host() -> None:
    resources = load(
        vs("  - route:\n    - destination: {host: reviews}\n", name="a"),
        vs(
            "  - route:\n    - destination: {host: reviews}\n",
            name="b",
            hosts="[reviews.default.svc.cluster.local]",
        ),
        vs("  - route:\n    - destination: {host: reviews}\n", name="c", hosts="[reviews]", namespace="prod"),
    )
    (message,) = analyze(resources)
    assert message == Message(
        "MK0104",
        Severity.ERROR,
        "VirtualService/default/b",
        "spec.hosts[0]",
        'host "reviews.default.svc.cluster.local" is also claimed by VirtualService/default/a; '
        "only one VirtualService per host is used (VirtualService/default/a). This can be fixed by merging "
        "the conflicting VirtualServices into a single resource.",
    )


def test_two_destination_rules_for_one_host() -> None:
    resources = load(REVIEWS_DR, REVIEWS_DR.replace("name: reviews}", "name: reviews-lb}"))
    assert found(resources) == [
        (
            "MK0105",
            "Warning",
            "spec.host",
            'host "reviews" already has DestinationRule/default/reviews in this namespace; '
            "only one DestinationRule per host is used (DestinationRule/default/reviews)",
        )
    ]
    assert analyze(resources)[0].resource == "DestinationRule/default/reviews-lb"


def test_invalid_regex_in_any_string_match() -> None:
    resources = load(
        vs("""  - match:
    - uri: {regex: "^/(reviews"}
      headers: {end-user: {regex: "*jason"}}
    - queryParams: {q: {regex: "[a-"}}
      withoutHeaders: {x: {regex: "ok.*"}}
    route:
    - destination: {host: reviews}
""")
    )
    engine = "(RE2, the regex engine of Envoy and Istio)"
    assert found(resources) == [
        (
            "MK0106",
            "Error",
            "spec.http[0].match[0].headers.end-user.regex",
            f'invalid regex "*jason": no argument for repetition operator: * {engine}',
        ),
        (
            "MK0106",
            "Error",
            "spec.http[0].match[0].uri.regex",
            f'invalid regex "^/(reviews": missing ): ^/(reviews {engine}',
        ),
        (
            "MK0106",
            "Error",
            "spec.http[0].match[1].queryParams.q.regex",
            f'invalid regex "[a-": missing ]: [a- {engine}',
        ),
    ]


def test_regexes_are_judged_by_re2_as_istio_does() -> None:
    resources = load(
        vs("""  - match:
    - uri: {regex: "^/(?!admin).*"}
      headers: {end-user: {regex: "(a)\\\\1"}}
    - uri: {regex: "^/api/v[0-9]+/.*"}
      headers: {x-lang: {regex: "\\\\pL+"}}
    route:
    - destination: {host: reviews}
""")
    )
    engine = "(RE2, the regex engine of Envoy and Istio)"
    assert found(resources) == [
        ("MK0106", "Error", "spec.http[0].match[0].headers.end-user.regex",
         f'invalid regex "(a)\\1": invalid escape sequence: \\1 {engine}'),
        ("MK0106", "Error", "spec.http[0].match[0].uri.regex",
         f'invalid regex "^/(?!admin).*": invalid perl operator: (?! {engine}'),
        ("MK0106", "Error", "spec.http[0].match[1].headers.x-lang.regex",
         'regex "\\pL+" is valid RE2 but meshkit\'s sidecar (Python re) cannot evaluate it: '
         "bad escape \\p at position 0"),
    ]


def test_percentages_outside_range() -> None:
    resources = load(
        vs("""  - route:
    - destination: {host: reviews}
    fault:
      delay: {fixedDelay: 1s, percentage: {value: 150}}
      abort: {httpStatus: 503, percentage: {value: -1}}
    mirror: {host: reviews}
    mirrorPercentage: {value: 100.5}
  - route:
    - destination: {host: reviews}
    fault:
      delay: {fixedDelay: 1s, percent: 101}
    mirror: {host: reviews}
    mirrorPercent: 200
""")
    )
    assert found(resources) == [
        ("MK0107", "Error", "spec.http[0].fault.abort.percentage.value", "percentage -1 is outside 0-100"),
        ("MK0107", "Error", "spec.http[0].fault.delay.percentage.value", "percentage 150 is outside 0-100"),
        ("MK0107", "Error", "spec.http[0].mirrorPercentage.value", "percentage 100.5 is outside 0-100"),
        ("MK0107", "Error", "spec.http[1].fault.delay.percent", "percentage 101 is outside 0-100"),
        ("MK0107", "Error", "spec.http[1].mirrorPercent", "percentage 200 is outside 0-100"),
    ]


def test_subset_selecting_no_endpoint() -> None:
    resources = load(
        REVIEWS_DR.replace("- {name: v3, labels: {version: v3}}", "- {name: v4, labels: {version: v4}}")
    )
    assert analyze(resources) == []
    assert found(resources, bookinfo_registry()) == [
        (
            "MK0108",
            "Warning",
            "spec.subsets[2].labels",
            'subset "v4" of host "reviews" selects no endpoint (labels: version=v4)',
        )
    ]


def test_strict_peer_authentication_against_tls_disable() -> None:
    disable = REVIEWS_DR.replace("  subsets:", "  trafficPolicy: {tls: {mode: DISABLE}}\n  subsets:")
    strict = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n"
    )
    expected = [
        (
            "MK0109",
            "Error",
            "spec.trafficPolicy.tls.mode",
            'tls mode DISABLE for host "reviews" conflicts with STRICT mTLS required by '
            "PeerAuthentication/istio-system/default; requests will be rejected",
        )
    ]
    assert found(load(disable, strict)) == expected
    assert found(load(disable, strict), bookinfo_registry()) == expected
    permissive_here = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: default, namespace: default}\nspec: {mtls: {mode: PERMISSIVE}}\n"
    )
    assert analyze(load(disable, strict, permissive_here)) == []
    assert analyze(load(disable)) == []


def test_strict_workload_policy_against_subset_tls_disable() -> None:
    disable_v2 = REVIEWS_DR.replace(
        "{name: v2, labels: {version: v2}}",
        "{name: v2, labels: {version: v2}, trafficPolicy: {tls: {mode: DISABLE}}}",
    )
    strict_v2 = (
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: reviews-v2}\n"
        "spec: {selector: {matchLabels: {app: reviews, version: v2}}, mtls: {mode: STRICT}}\n"
    )
    assert [(m.code, m.field) for m in analyze(load(disable_v2, strict_v2), bookinfo_registry())] == [
        ("MK0109", "spec.subsets[1].trafficPolicy.tls.mode")
    ]


def test_retries_abort_status_and_duplicate_subsets() -> None:
    resources = load(
        REVIEWS_DR.replace("{name: v3, labels: {version: v3}}", "{name: v1, labels: {version: v3}}"),
        vs("""  - route:
    - destination: {host: reviews}
    retries: {attempts: -1}
  - route:
    - destination: {host: reviews}
    fault:
      abort: {httpStatus: 600, percentage: {value: 10}}
"""),
    )
    assert found(resources) == [
        ("MK0112", "Error", "spec.subsets[2].name", 'subset name "v1" is defined more than once'),
        ("MK0110", "Error", "spec.http[0].retries.attempts", "retries.attempts must be >= 0 (got -1)"),
        ("MK0111", "Error", "spec.http[1].fault.abort.httpStatus", "abort httpStatus 600 is outside 200-599"),
    ]


def test_fault_without_percentage_and_fault_disabling_retries() -> None:
    resources = load(
        vs("""  - route:
    - destination: {host: reviews}
    timeout: 1s
    fault:
      delay: {fixedDelay: 1s}
      abort: {httpStatus: 500}
""")
    )
    assert found(resources) == [
        (
            "MK0115",
            "Info",
            "spec.http[0].fault",
            "fault injection disables this route's timeout and retries (as in Istio)",
        ),
        (
            "MK0113",
            "Warning",
            "spec.http[0].fault.abort",
            "fault.abort sets no percentage: no request will be aborted",
        ),
        (
            "MK0113",
            "Warning",
            "spec.http[0].fault.delay",
            "fault.delay sets no percentage: no request will be delayed",
        ),
    ]


def test_duplicate_resource_and_route_without_destination() -> None:
    twice = vs("  - route:\n    - destination: {host: reviews}\n")
    resources = load(
        twice, twice, vs("  - name: nowhere\n    timeout: 1s\n", name="ratings", hosts="[ratings]")
    )
    assert [(m.code, m.resource, m.field, m.text) for m in analyze(resources)] == [
        (
            "MK0116",
            "VirtualService/default/ratings",
            "spec.http[0].route",
            "http route has no route destinations",
        ),
        (
            "MK0114",
            "VirtualService/default/reviews",
            "",
            "VirtualService/default/reviews is defined more than once in the input",
        ),
    ]


def test_authorization_condition_keys() -> None:
    resources = load_resources("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad}
spec:
  rules:
  - when:
    - {key: connection.sni, values: [x]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ok}
spec:
  rules:
  - when:
    - {key: "request.headers[x-token]", values: [x]}
    - {key: source.principal, values: [x]}
    - {key: source.namespace, values: [x]}
    - {key: source.ip, values: [10.0.0.0/8]}
    - {key: remote.ip, values: [10.0.0.1]}
    - {key: destination.port, values: ["80"]}
""")
    assert [(m.resource, m.code, m.severity.value, m.field, m.text) for m in analyze(resources)] == [
        (
            "AuthorizationPolicy/default/bad",
            "MK0117",
            "Error",
            "spec.rules[0].when[0].key",
            'condition key "connection.sni" is not supported by meshkit (supported: '
            "request.headers[<name>], source.principal, source.namespace, source.ip, remote.ip, "
            "destination.port, request.auth.principal, request.auth.audiences, request.auth.presenter, "
            "request.auth.claims[<name>])",
        )
    ]


def test_jwt_based_authorization_without_request_authentication_never_matches() -> None:
    resources = sample("authorization-policy-httpbin-deny") + load_resources("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
""")
    tail = "validates tokens, so it never matches (and its negation always does)"
    assert [(m.resource, m.code, m.severity.value, m.field, m.text) for m in analyze(resources)] == [
        (
            "AuthorizationPolicy/default/jwt",
            "MK0119",
            "Warning",
            "spec.rules[0].from[0].source.requestPrincipals",
            f"requestPrincipals: no RequestAuthentication in namespace default or istio-system {tail}",
        ),
        (
            "AuthorizationPolicy/foo/httpbin",
            "MK0119",
            "Warning",
            "spec.rules[0].when[0].key",
            'condition key "request.auth.claims[iss]": no RequestAuthentication in namespace foo or '
            f"istio-system {tail}",
        ),
    ]


def test_jwt_based_authorization_with_a_request_authentication_is_fine() -> None:
    resources = sample("authorization-policy-httpbin-deny") + load_resources("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
    when: [{key: "request.auth.claims[a][b]", values: ["x"]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  jwtRules: [{issuer: me, jwksUri: "http://127.0.0.1:1/jwks.json"}]
""")
    assert analyze(resources) == []


def test_registry_in_other_namespace_and_external_hosts() -> None:
    registry = RegistryView(
        services=(Service("httpbin", "foo", 8000),),
        endpoints=(
            Endpoint("httpbin-v1-0", "httpbin-v1", "httpbin", "foo", "127.0.0.1", 1, {"app": "httpbin"}),
        ),
    )
    resources = load(
        vs(
            "  - route:\n    - destination: {host: httpbin.foo}\n  - route:\n"
            "    - destination: {host: httpbin.org}\n",
            name="h",
            hosts="[httpbin.foo]",
        )
    )
    assert found(resources, registry) == [
        (
            "MK0103",
            "Warning",
            "spec.http[1].route[0].destination.host",
            'host "httpbin.org" is not a service in the registry',
        ),
    ]


def test_destination_port_must_be_the_service_port() -> None:
    resources = load(
        vs(
            "  - route:\n    - destination: {host: reviews, port: {number: 9090}}\n"
            "  - route:\n    - destination: {host: reviews, port: {number: 9080}}\n"
        )
    )
    assert found(resources) == []
    assert found(resources, bookinfo_registry()) == [
        (
            "MK0118",
            "Warning",
            "spec.http[0].route[0].destination.port.number",
            'port 9090 is not the port of service "reviews" (9080)',
        ),
    ]


_GATEWAYS = "".join(f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
""" for name in ("httpbin-gateway", "gw"))


def _claim_route(gateways: str, header: str = "@request.auth.claims.groups") -> str:
    """A VirtualService routing on a JWT claim, with the gateways it may name (as in Istio's task)."""
    return _GATEWAYS + f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: ["*"]
  {gateways}
  http:
  - match:
    - headers: {{"{header}": {{exact: group1}}}}
    route:
    - destination: {{host: httpbin}}
"""


_GATEWAY_JWT = """apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-on-ingress, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: http://127.0.0.1:1/jwks.json
---
"""


def test_jwt_claim_routes_belong_on_gateways() -> None:
    assert found(load(_GATEWAY_JWT + _claim_route("gateways: [httpbin-gateway]"))) == []
    assert found(load(_GATEWAY_JWT + _claim_route("gateways: [httpbin-gateway]",
                                                  "@request.auth.claims[realm][role]"))) == []
    # Istio's validation refuses claim routes on a VirtualService for sidecars
    found_on_mesh = found(load(_claim_route("gateways: [mesh]").replace('hosts: ["*"]', "hosts: [httpbin]")))
    [(code, severity, field, text)] = found_on_mesh
    assert (code, severity) == ("MK0120", "Error")
    assert field == "spec.http[0].match[0].headers.@request.auth.claims.groups"
    assert text.startswith("JWT claim based routing (key: groups) is only supported for gateway, found no "
                           "gateways: [mesh]")
    malformed = _claim_route("gateways: [gw]", "@request.auth.claims")
    [(code, severity, _, text)] = found(load(_GATEWAY_JWT + malformed))
    assert (code, severity) == ("MK0123", "Error") and "is not a JWT claim match" in text


def test_a_jwt_rule_without_keys_is_named() -> None:
    resources = load("""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - issuer: https://accounts.example.com
  - issuer: me
    jwksUri: http://127.0.0.1:1/jwks.json
""")
    [(code, severity, field, text)] = found(resources)
    assert (code, severity, field) == ("MK0121", "Warning", "spec.jwtRules[0]")
    assert 'issuer "https://accounts.example.com" has neither jwks nor jwksUri' in text
