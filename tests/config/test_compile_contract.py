"""The compiler's output is accepted by the real sidecar's snapshot parser (the shared contract)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.proxy.filters.authz import compile_authz
from meshkit.proxy.routing import RouteTable
from meshkit.proxy.snapshot import Snapshot
from tests.config.bookinfo import BOOKINFO_GATEWAY_VS, SAMPLES, bookinfo_registry, node_for

GATEWAY = Node("ingress-0", namespace="istio-system", labels={"istio": "ingressgateway"}, kind="gateway")
HTTPBIN_V1 = Node(
    "httpbin-v1-0",
    namespace="foo",
    workload="httpbin-v1",
    service="httpbin",
    labels={"app": "httpbin", "version": "v1"},
    service_account="httpbin",
    app_port=8000,
)


def _registry() -> RegistryView:
    bookinfo = bookinfo_registry()
    httpbin = [
        Endpoint(
            f"httpbin-{v}-0",
            f"httpbin-{v}",
            "httpbin",
            ns,
            "127.0.0.1",
            43000 + i,
            {"app": "httpbin", "version": v},
            service_account="httpbin",
            has_sidecar=v == "v1",
        )
        for i, (ns, v) in enumerate([("default", "v1"), ("default", "v2"), ("foo", "v1")])
    ]
    return RegistryView(
        services=(*bookinfo.services, Service("httpbin", "default", 8000), Service("httpbin", "foo", 8000)),
        endpoints=(*bookinfo.endpoints, *httpbin),
        root_pem=bookinfo.root_pem,
    )


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sample_compiles_to_a_snapshot_the_sidecar_accepts(path: Path) -> None:
    resources = load_resources(path.read_text())
    registry = _registry()
    for node in (node_for("productpage"), node_for("reviews", "v2"), GATEWAY, HTTPBIN_V1):
        doc = json.loads(json.dumps(compile_snapshot(resources, registry, node, revision=3)))
        snapshot = Snapshot.from_json(doc)
        assert snapshot.version == doc["version"]
        assert set(snapshot.clusters) == set(doc["clusters"])
        inbound = doc["inbound"]
        compile_authz(inbound["authz"], port=inbound["service_port"])  # the authz filter accepts it too


def test_every_authorization_field_compiles_to_what_the_authz_filter_enforces() -> None:
    resources = load_resources("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: everything, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: [a], notPrincipals: [b], namespaces: [c], notNamespaces: [d],
               ipBlocks: [10.0.0.0/8], notIpBlocks: [10.1.0.0/16], remoteIpBlocks: [192.168.0.1],
               notRemoteIpBlocks: [192.168.0.2],
               requestPrincipals: ["*"], notRequestPrincipals: [x]}
    to:
    - operation: {hosts: [h], notHosts: [i], methods: [GET], notMethods: [POST], paths: ["/a*"],
                  notPaths: [/b], ports: ["8000"], notPorts: ["9000"]}
    when:
    - {key: "request.headers[x-a]", values: ["1"], notValues: ["2"]}
    - {key: source.ip, values: [10.0.0.1]}
    - {key: "request.auth.claims[iss]", values: [x]}
""")
    doc = compile_snapshot(resources, _registry(), HTTPBIN_V1)
    assert compile_authz(doc["inbound"]["authz"], port=8000) is not None


def test_the_sidecar_rejects_what_the_contract_forbids() -> None:
    """The check above can fail: a broken compiled document is refused by the same parser."""
    doc = compile_snapshot(
        load_resources((SAMPLES / "destination-rule-all.yaml").read_text()),
        _registry(),
        node_for("productpage"),
    )
    doc["clusters"]["reviews.default|v1"]["lb"] = "FOO"
    with pytest.raises(ValueError, match="lb"):
        Snapshot.from_json(doc)


def test_the_sidecar_finds_wildcard_and_external_virtual_hosts() -> None:
    resources = load_resources(BOOKINFO_GATEWAY_VS)
    gateway = compile_snapshot(resources, _registry(), GATEWAY)
    table = RouteTable.from_snapshot(Snapshot.from_json(gateway).doc["outbound"])
    found = table.virtual_host("localhost:8080")
    assert found is not None and found.name == "*"
    assert table.virtual_host("reviews.default:9080").name == "*"  # type: ignore[union-attr]  # no own host
    sidecar = RouteTable.from_snapshot(
        compile_snapshot(resources, _registry(), node_for("productpage"))["outbound"]
    )
    assert sidecar.virtual_host("localhost:8080") is None
    assert sidecar.virtual_host("httpbin.org").name == "httpbin.org"  # type: ignore[union-attr]
