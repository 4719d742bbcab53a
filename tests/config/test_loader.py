"""The loader: Istio samples load unchanged; every problem is reported with resource and field path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshkit.config.loader import load_files, load_resources
from meshkit.config.messages import ConfigError, Message
from meshkit.config.resources import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    VirtualService,
)
from tests.config.bookinfo import SAMPLES

ALL_SAMPLES = sorted(SAMPLES.glob("*.yaml"))


def problems(source: object, **kwargs: str) -> list[Message]:
    with pytest.raises(ConfigError) as caught:
        load_resources(source, **kwargs)  # type: ignore[arg-type]
    return caught.value.messages


def texts(source: object) -> list[str]:
    return [m.text for m in problems(source)]


VS_HEAD = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
"""


@pytest.mark.parametrize("path", ALL_SAMPLES, ids=lambda p: p.stem)
def test_istio_samples_load_unchanged(path: Path) -> None:
    resources = load_resources(path.read_text(), origin=str(path))
    assert resources
    assert all(r.metadata.name for r in resources)


def test_samples_have_the_expected_content() -> None:
    by_name = {p.stem: load_resources(p.read_text()) for p in ALL_SAMPLES}
    assert [r.metadata.name for r in by_name["virtual-service-all-v1"]] == [
        "productpage",
        "reviews",
        "ratings",
        "details",
    ]
    delay = by_name["virtual-service-ratings-test-delay"][0]
    assert isinstance(delay, VirtualService)
    fault = delay.spec.http[0].fault  # type: ignore[index]
    assert fault is not None and fault.delay is not None
    assert fault.delay.fixed_delay.ms == 7000  # type: ignore[attr-defined]
    assert fault.delay.percentage is not None and fault.delay.percentage.value == 100.0
    legacy = by_name["virtual-service-ratings-test-delay-v1alpha3-percent"][0]
    assert legacy.api_version == "networking.istio.io/v1alpha3"
    assert legacy.spec.http[0].fault.delay.percent == 100  # type: ignore[union-attr,index]
    breaker = by_name["httpbin-circuit-breaker"][0]
    assert isinstance(breaker, DestinationRule)
    assert breaker.spec.traffic_policy.connection_pool.tcp.max_connections == 1  # type: ignore[union-attr]
    strict = by_name["peer-authentication-strict-mesh"][0]
    assert isinstance(strict, PeerAuthentication)
    assert strict.metadata.namespace == "istio-system" and strict.spec.mtls.mode == "STRICT"  # type: ignore[union-attr]
    port_level = by_name["peer-authentication-port-level"][1]
    assert port_level.spec.port_level_mtls[8080].mode == "DISABLE"  # type: ignore[union-attr,index]
    allow_nothing = by_name["authorization-policy-bookinfo"][0]
    assert isinstance(allow_nothing, AuthorizationPolicy)
    assert allow_nothing.spec.effective_action == "ALLOW" and allow_nothing.spec.rules is None


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("networking.istio.io/v1", "VirtualService"),
        ("networking.istio.io/v1beta1", "VirtualService"),
        ("networking.istio.io/v1alpha3", "DestinationRule"),
        ("security.istio.io/v1", "PeerAuthentication"),
        ("security.istio.io/v1beta1", "AuthorizationPolicy"),
    ],
)
def test_accepted_api_versions(api_version: str, kind: str) -> None:
    spec = {"VirtualService": {"hosts": ["a"]}, "DestinationRule": {"host": "a"}}.get(kind, {})
    (resource,) = load_resources(
        {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    )
    assert resource.kind == kind and resource.api_version == api_version


def test_wrong_api_version_names_kind_and_lists_accepted() -> None:
    (message,) = problems(
        {
            "apiVersion": "security.istio.io/v1alpha1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "foo"},
            "spec": {},
        }
    )
    assert message.code == "MK0003"
    assert message.resource == "PeerAuthentication/foo/default"
    assert message.field == "apiVersion"
    assert message.text == (
        'apiVersion "security.istio.io/v1alpha1" is not accepted for kind PeerAuthentication '
        "(accepted: security.istio.io/v1, security.istio.io/v1beta1)"
    )


def test_networking_kind_under_security_group_is_rejected() -> None:
    (message,) = problems(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "r"},
            "spec": {"hosts": ["r"]},
        }
    )
    assert (
        "accepted: networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3"
        in message.text
    )


def test_unsupported_and_unknown_kinds() -> None:
    gateway, foo = problems(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: g}\n---\n"
        "apiVersion: v1\nkind: Foo\nmetadata: {name: f}\n"
    )
    supported = ("(supported: AuthorizationPolicy, ConfigMap, Deployment, DestinationRule, EnvoyFilter, "
                 "Gateway, GatewayClass, HTTPRoute, Namespace, NetworkPolicy, PeerAuthentication, "
                 "RequestAuthentication, Secret, Service, ServiceAccount, ServiceEntry, TLSRoute, Telemetry, "
                 "VirtualService)")
    assert gateway.text == f"kind Sidecar is not supported by meshkit {supported}"
    assert foo.text == f"kind Foo is not a known kind {supported}"


def test_unsupported_istio_field_is_named_as_such() -> None:
    (message,) = problems(
        VS_HEAD
        + """
  http:
  - fault:
      delay: {fixedDelay: 1s, exponentialDelay: 2s, percentage: {value: 10}}
    route: [{destination: {host: reviews}}]
"""
    )
    assert message.code == "MK0004"
    assert message.resource == "VirtualService/default/reviews"
    assert message.field == "spec.http[0].fault.delay.exponentialDelay"
    assert message.text == "spec.http[0].fault.delay.exponentialDelay is not supported by meshkit"


def test_unknown_field_is_named_as_unknown() -> None:
    (message,) = problems(VS_HEAD + "  http:\n  - foo: 1\n    route: [{destination: {host: reviews}}]\n")
    assert message.code == "MK0005"
    assert message.field == "spec.http[0].foo"
    assert message.text == "spec.http[0].foo: unknown field"


@pytest.mark.parametrize(
    ("yaml_tail", "field"),
    [
        ("  tcp:\n  - match: [{sourceSubnet: 10.0.0.0/8}]\n    route: [{destination: {host: r}}]\n",
         "spec.tcp[0].match[0].sourceSubnet"),
        ("  http:\n  - directResponse: {status: 503}\n", "spec.http[0].directResponse"),
        (
            "  http:\n  - corsPolicy: {allowOrigins: [{exact: a}]}\n    route: [{destination: {host: r}}]\n",
            "spec.http[0].corsPolicy",
        ),
        (
            "  http:\n  - match: [{scheme: {exact: http}}]\n    route: [{destination: {host: r}}]\n",
            "spec.http[0].match[0].scheme",
        ),
        (
            "  http:\n  - route: [{destination: {host: r}}]\n    retries: {attempts: 1, backoff: 1s}\n",
            "spec.http[0].retries.backoff",
        ),
        (
            "  http:\n  - route: [{destination: {host: r}}]\n    fault: {abort: {grpcStatus: UNAVAILABLE, "
            "httpStatus: 503}}\n",
            "spec.http[0].fault.abort.grpcStatus",
        ),
        (
            "  http:\n  - route: [{destination: {host: r}}]\n    mirrors: [{destination: {host: r}}]\n",
            "spec.http[0].mirrors",
        ),
    ],
)
def test_virtual_service_unsupported_fields(yaml_tail: str, field: str) -> None:
    messages = problems(VS_HEAD + yaml_tail)
    assert [m.text for m in messages] == [f"{field} is not supported by meshkit"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"host": "r", "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x"}}}},
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
        ({"host": "r", "trafficPolicy": {"tunnel": {}}}, "spec.trafficPolicy.tunnel"),
        (
            {"host": "r", "trafficPolicy": {"tls": {"mode": "SIMPLE", "caCrl": "/etc/crl.pem"}}},
            "spec.trafficPolicy.tls.caCrl",
        ),
        (
            {
                "host": "r",
                "subsets": [
                    {"name": "v1", "trafficPolicy": {"connectionPool": {"tcp": {"tcpKeepalive": {}}}}}
                ],
            },
            "spec.subsets[0].trafficPolicy.connectionPool.tcp.tcpKeepalive",
        ),
        (
            {"host": "r", "trafficPolicy": {"outlierDetection": {"consecutiveErrors": 3}}},
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
        ),
        ({"host": "r", "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "c", "caCrl": "/c"}}},
         "spec.trafficPolicy.tls.caCrl"),
    ],
)
def test_destination_rule_unsupported_fields(spec: dict[str, object], field: str) -> None:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "r"},
        "spec": spec,
    }
    assert texts(doc) == [f"{field} is not supported by meshkit"]


def test_security_unsupported_fields_and_values() -> None:
    messages = problems("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules:
  - from: [{source: {serviceAccounts: [sleep], principals: [a]}}]
    to: [{operation: {hosts: [x], ports: ["80", "eighty"]}, notHosts: [y]}]
""")
    unsupported = "is not supported by meshkit"
    assert sorted((m.field, m.text) for m in messages) == [
        ("spec.action", f"spec.action: CUSTOM {unsupported} (supported: ALLOW, DENY, AUDIT)"),
        ("spec.provider", f"spec.provider {unsupported}"),
        (
            "spec.rules[0].from[0].source.serviceAccounts",
            f"spec.rules[0].from[0].source.serviceAccounts {unsupported}",
        ),
        ("spec.rules[0].to[0].notHosts", "spec.rules[0].to[0].notHosts: unknown field"),
        (
            "spec.rules[0].to[0].operation.ports[1]",
            'spec.rules[0].to[0].operation.ports[1]: port "eighty" is not a number between 1 and 65535',
        ),
    ]
    assert all(m.resource == "AuthorizationPolicy/foo/ext" for m in messages)


def test_tls_modes_meshkit_does_not_implement() -> None:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "r"},
        "spec": {"host": "r", "trafficPolicy": {"tls": {"mode": "MUTUAL"}}},
    }
    assert texts(doc) == [
        "spec.trafficPolicy.tls: mode MUTUAL needs credentialName (a Secret with tls.crt, tls.key and "
        "ca.crt in the client's namespace) or clientCertificate and privateKey (files of a Secret volume "
        "the pod's sidecar.istio.io/userVolume annotations mount)"
    ]
    doc["spec"] = {"host": "r", "trafficPolicy": {"tls": {"mode": "MUTUAL", "clientCertificate": "/c.pem"}}}
    assert len(texts(doc)) == 1  # the key file too
    doc["spec"] = {"host": "r", "trafficPolicy": {"tls": {"mode": "BOGUS"}}}
    assert texts(doc) == [
        "spec.trafficPolicy.tls.mode: 'BOGUS' is not one of DISABLE, ISTIO_MUTUAL, SIMPLE, MUTUAL"]


def test_metadata_fields_from_kubectl_get_are_named() -> None:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "r", "resourceVersion": "12", "labels": {"a": "b"}},
        "spec": {"host": "r"},
    }
    assert texts(doc) == ["metadata.resourceVersion is not supported by meshkit"]


def test_string_match_needs_exactly_one() -> None:
    messages = problems(
        VS_HEAD
        + """
  http:
  - match:
    - uri: {exact: /a, prefix: /b}
    - headers: {end-user: {}}
    route: [{destination: {host: reviews}}]
"""
    )
    assert [m.text for m in messages] == [
        "spec.http[0].match[0].uri: exactly one of exact, prefix, regex must be set (got exact, prefix)",
        "spec.http[0].match[1].headers.end-user: exactly one of exact, prefix, regex must be set (got none)",
    ]


def test_required_fields_and_types() -> None:
    messages = problems("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {namespace: x}
spec:
  hosts: []
  http:
  - route:
    - destination: {subset: v1}
      weight: heavy
    fault: {abort: {percentage: {value: 10}}}
    timeout: 10
""")
    assert [(m.resource, m.text) for m in messages] == [
        ("<input> document 1", "metadata.name: required field is missing"),
        ("<input> document 1", "spec.http[0].route[0].destination.host: required field is missing"),
        (
            "<input> document 1",
            "spec.http[0].route[0].weight: expected an integer (got 'heavy')",
        ),
        ("<input> document 1", "spec.http[0].timeout: expected a string (got 10)"),
        ("<input> document 1", "spec.http[0].fault.abort.httpStatus: required field is missing"),
    ]


def test_bad_duration_names_field() -> None:
    assert texts(VS_HEAD + "  http:\n  - route: [{destination: {host: r}}]\n    timeout: 7x\n") == [
        'spec.http[0].timeout: invalid duration "7x" (expected e.g. "7s", "500ms", "1.5s", "1m", "1h")'
    ]


def test_all_problems_across_documents_not_just_the_first() -> None:
    messages = problems(
        VS_HEAD
        + "  bogus: 1\n---\n"
        + VS_HEAD.replace("reviews}", "ratings}")
        + "  tcp:\n  - match: [{sourceSubnet: 10.0.0.0/8}]\n    route: [{destination: {host: r}}]\n"
        + "---\n- not a mapping\n"
    )
    assert [(m.resource, m.field) for m in messages] == [
        ("VirtualService/default/reviews", "spec.bogus"),
        ("VirtualService/default/ratings", "spec.tcp[0].match[0].sourceSubnet"),
        ("<input> document 3", ""),
    ]
    assert messages[2].text == "expected a mapping with apiVersion, kind, metadata and spec, got list"


def test_multi_document_skips_empty_documents_and_expands_lists() -> None:
    text = (SAMPLES / "virtual-service-all-v1.yaml").read_text()
    assert len(load_resources("---\n\n---\n" + text + "\n---\n# only a comment\n")) == 4
    items = [r.to_dict() for r in load_resources(text)]
    assert [
        r.metadata.name for r in load_resources({"apiVersion": "v1", "kind": "List", "items": items})
    ] == ["productpage", "reviews", "ratings", "details"]
    assert len(load_resources(json.dumps({"kind": "List", "items": items}))) == 4
    assert len(load_resources(items)) == 4
    assert len(load_resources(text.encode())) == 4
    assert load_resources("") == []


def test_json_input() -> None:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "r"},
        "spec": {"host": "r", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    }
    (rule,) = load_resources(json.dumps(doc))
    assert rule.to_dict()["spec"] == doc["spec"]


def test_yaml_syntax_error_has_line_and_column() -> None:
    (message,) = problems("apiVersion: v1\nkind: [VirtualService\nmetadata: {}\n", origin="vs.yaml")
    assert message.code == "MK0001"
    assert message.resource == "vs.yaml"
    assert message.text.startswith("YAML syntax error at line 3, column 9:")


def test_unnamed_document_is_named_by_origin_and_number() -> None:
    (message,) = problems(
        "---\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {hosts: [a]}\n",
        origin="lab.yaml",
    )
    assert message.resource == "lab.yaml document 2"  # a leading "---" opens document 1
    assert message.field == "metadata"


def test_load_files_expands_directories_and_names_files(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text((SAMPLES / "virtual-service-reviews-v3.yaml").read_text())
    (tmp_path / "a.json").write_text(
        json.dumps(load_resources((SAMPLES / "httpbin-circuit-breaker.yaml").read_text())[0].to_dict())
    )
    (tmp_path / "notes.txt").write_text("not config")
    assert [r.ref for r in load_files([tmp_path])] == [
        "DestinationRule/default/httpbin",
        "VirtualService/default/reviews",
    ]
    (tmp_path / "c.yml").write_text(VS_HEAD + "  bogus: 1\n")
    (tmp_path / "d.yaml").write_text("kind: VirtualService\n")
    with pytest.raises(ConfigError) as caught:
        load_files([tmp_path])
    assert [(m.resource, m.text) for m in caught.value.messages] == [
        (f"{tmp_path / 'c.yml'}: VirtualService/default/reviews", "spec.bogus: unknown field"),
        (
            f"{tmp_path / 'd.yaml'} document 1",
            "apiVersion missing is not accepted for kind VirtualService (accepted: networking.istio.io/v1, "
            "networking.istio.io/v1beta1, networking.istio.io/v1alpha3)",
        ),
    ]


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_files([tmp_path / "absent.yaml"])


def test_duplicate_yaml_keys_are_refused_not_silently_overwritten() -> None:
    (message,) = problems(
        VS_HEAD
        + """  http:
  - route:
    - destination: {host: reviews, subset: v1}
    route:
    - destination: {host: reviews, subset: v2}
"""
    )
    assert message.code == "MK0001"
    assert message.text == "YAML syntax error at line 10, column 5: duplicate key 'route' (first at line 8)"


def test_yaml_merge_keys_still_work() -> None:
    (rule,) = load_resources("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - &v1 {name: v1, labels: {version: v1}}
  - <<: *v1
    name: v2
""")
    assert [s.name for s in rule.spec.subsets] == ["v1", "v2"]  # type: ignore[attr-defined,union-attr]


def test_wrong_shapes_say_what_was_expected() -> None:
    messages = problems("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p}
spec: {mtls: STRICT, portLevelMtls: {http: {mode: DISABLE}}, selector: {matchLabels: [app]}}
""")
    assert sorted(m.text for m in messages) == [
        "spec.mtls: expected a mapping (got 'STRICT')",
        "spec.portLevelMtls.http: the key must be an integer (got 'http')",
        "spec.selector.matchLabels: expected a mapping (got ['app'])",
    ]
    assert texts(VS_HEAD.replace("[reviews]", "reviews")) == ["spec.hosts: expected a list (got 'reviews')"]
