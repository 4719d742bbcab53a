"""istioctl's DestinationRule and policy checks (`meshkit.config.analyze_policies`): each one triggered,
and a case that must not trigger it."""

from __future__ import annotations

from meshkit.config.analyze import analyze
from meshkit.config.loader import load_files, load_resources
from meshkit.config.registry import RegistryView
from meshkit.config.resources import Resource
from tests.config.bookinfo import SAMPLES, bookinfo_registry, sample


def codes_of(resources: list[Resource], *wanted: str,
             registry: RegistryView | None = None) -> list[tuple[str, str, str, str]]:
    return [(m.code, m.severity.value, m.field, m.text) for m in analyze(resources, registry)
            if m.code in wanted]


def rule(subsets: str = "  - {name: v1, labels: {version: v1}}\n", *, host: str = "reviews",
         policy: str = "") -> list[Resource]:
    return load_resources(f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: {host}
{policy}  subsets:
{subsets}""")


# -- MK0128: subset names ------------------------------------------------------------------------


def test_subset_names_must_be_dns_labels() -> None:
    resources = rule("  - {name: V1, labels: {version: v1}}\n  - {name: v1.0, labels: {version: v1}}\n"
                     "  - {name: canary-2, labels: {version: v2}}\n")
    found = codes_of(resources, "MK0128")
    assert [(c, s, f) for c, s, f, _ in found] == [
        ("MK0128", "Error", "spec.subsets[0].name"), ("MK0128", "Error", "spec.subsets[1].name")]
    assert found[0][3].startswith('subset name is invalid: "V1" (a DNS-1123 label')
    assert analyze(rule("  - {name: v1, labels: {version: v1}}\n  - {name: canary-2}\n")) == []


# -- MK0129: empty trafficPolicy -----------------------------------------------------------------


def test_an_empty_traffic_policy_is_refused() -> None:
    resources = rule("  - {name: v1, labels: {version: v1}, trafficPolicy: {}}\n",
                     policy="  trafficPolicy: {}\n")
    empty = 'traffic policy must have at least one field (remove "trafficPolicy: {}" or set a policy)'
    assert codes_of(resources, "MK0129") == [
        ("MK0129", "Error", "spec.subsets[0].trafficPolicy", empty),
        ("MK0129", "Error", "spec.trafficPolicy", empty),
    ]
    with_policy = rule(policy="  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n")
    assert analyze(with_policy) == []


# -- MK0130: portLevelMtls without a selector ----------------------------------------------------


def _peer_authentication(namespace: str, selector: str) -> list[Resource]:
    return load_resources(f"""apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: {namespace}}}
spec:
{selector}  mtls: {{mode: STRICT}}
  portLevelMtls:
    8080: {{mode: PERMISSIVE}}
""")


def test_port_level_mtls_needs_a_selector() -> None:
    [(code, severity, field, text)] = codes_of(_peer_authentication("istio-system", ""), "MK0130")
    assert (code, severity, field) == ("MK0130", "Error", "spec.portLevelMtls")
    assert text.startswith("portLevelMtls requires a workload selector: mesh/namespace peer authentication "
                           "cannot have port level mTLS (this mesh-wide policy")
    [(_, _, _, text)] = codes_of(_peer_authentication("foo", ""), "MK0130")
    assert "this namespace-wide policy" in text
    selected = _peer_authentication("foo", "  selector: {matchLabels: {app: httpbin}}\n")
    assert codes_of(selected, "MK0130") == []


# -- MK0131: DestinationRule host ----------------------------------------------------------------


def test_a_destination_rule_host_that_matches_no_service() -> None:
    registry = bookinfo_registry()
    assert codes_of(rule(host="ratingz"), "MK0131", registry=registry) == [
        ("MK0131", "Warning", "spec.host",
         'Referenced host not found: "ratingz" (no service ratingz.default in the registry: this '
         "DestinationRule applies to nothing until the service exists)"),
    ]
    assert codes_of(rule(host="reviews.default.svc.cluster.local"), "MK0131", registry=registry) == []
    assert codes_of(rule(host="ratingz"), "MK0131") == []  # offline, with no registry: nothing is known
    external = load_resources("""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin-ext}
spec:
  host: httpbin.org
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
""")
    assert codes_of(external, "MK0131", registry=registry) == []


# -- MK0132 / MK0133: AuthorizationPolicy ---------------------------------------------------------


def _policy(namespace: str, selector: str, namespaces: str = "[default]") -> list[Resource]:
    return load_resources(f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: viewer, namespace: {namespace}}}
spec:
{selector}  action: ALLOW
  rules:
  - from: [{{source: {{namespaces: {namespaces}}}}}]
""")


def test_an_authorization_policy_that_selects_no_workload() -> None:
    registry = bookinfo_registry()
    [(code, severity, field, text)] = codes_of(
        _policy("default", "  selector: {matchLabels: {app: ratingz}}\n"), "MK0132", registry=registry)
    assert (code, severity, field) == ("MK0132", "Warning", "spec.selector.matchLabels")
    assert text.startswith("No matching workloads for this resource with the following labels: app=ratingz")
    # a selector of another namespace's workloads selects nothing outside the root namespace
    assert [c for c, *_ in codes_of(_policy("foo", "  selector: {matchLabels: {app: ratings}}\n"), "MK0132",
                                    registry=registry)] == ["MK0132"]
    for namespace, selector in (("default", "  selector: {matchLabels: {app: ratings}}\n"),
                                ("istio-system", "  selector: {matchLabels: {app: ratings}}\n"),
                                ("istio-system", "  selector: {matchLabels: {istio: ingressgateway}}\n"),
                                ("default", "")):
        clean = codes_of(_policy(namespace, selector), "MK0132", registry=registry)
        assert clean == [], (namespace, selector)


def test_an_authorization_policy_naming_a_namespace_that_does_not_exist() -> None:
    registry = bookinfo_registry()
    resources = _policy("default", "", "[defualt, istio-system, \"team-*\"]")
    assert codes_of(resources, "MK0133", registry=registry) == [
        ("MK0133", "Warning", "spec.rules[0].from[0].source.namespaces[0]",
         'Referenced namespace not found: "defualt" (no workload, service or Namespace of the mesh is in '
         "it)"),
    ]
    namespace = load_resources("apiVersion: v1\nkind: Namespace\nmetadata: {name: defualt}\n")
    assert codes_of(resources + namespace, "MK0133", registry=registry) == []


def test_istio_samples_stay_clean_with_the_registry() -> None:
    """Valid Istio YAML gets no new finding: the samples against the Bookinfo registry."""
    for names in (("virtual-service-all-v1", "destination-rule-all"),
                  ("destination-rule-all-mtls", "peer-authentication-strict-mesh",
                   "authorization-policy-bookinfo")):
        messages = analyze(sample(*names), bookinfo_registry())
        assert [m for m in messages if m.code >= "MK0124"] == [], names


def test_no_istio_sample_is_refused_by_the_new_checks() -> None:
    """Every committed Istio sample, alone and with the Bookinfo registry: no istioctl-level check
    (MK0120, MK0124-MK0138) reports an Error, so nothing valid is refused at apply."""
    for path in sorted(SAMPLES.glob("*.yaml")):
        resources = load_files([path])
        for registry in (None, bookinfo_registry()):
            refused = [m for m in analyze(resources, registry) if m.severity.value == "Error"
                       and (m.code == "MK0120" or "MK0124" <= m.code <= "MK0138")]
            assert refused == [], path.name
