"""ServiceEntry in the compiled snapshot: Istio's "Accessing External Services" YAML, verbatim."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError
from meshkit.config.registry import Node, RegistryView, Service
from meshkit.proxy.snapshot import Snapshot
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.config.bookinfo import node_for, sample
from tests.config.test_compile_contract import GATEWAY as GATEWAY_NODE

STAND_IN = "127.0.0.1:8100"
HOSTS = {"httpbin.org:80": STAND_IN}


def _compiled(*names: str, hosts: dict[str, str] | None = None, real_dns: bool = False,
              node: Any = None) -> dict[str, Any]:
    registry = RegistryView(external_hosts=tuple((hosts if hosts is not None else HOSTS).items()),
                            real_dns=real_dns)
    doc = compile_snapshot(sample(*names), registry, node or node_for("productpage"))
    Snapshot.from_json(doc)  # the sidecar takes it
    return doc


def _vhost(doc: dict[str, Any], name: str) -> dict[str, Any]:
    [vhost] = [v for v in doc["outbound"]["virtual_hosts"] if v["name"] == name]
    return vhost


def test_an_http_service_entry_is_a_virtual_host_and_a_cluster_at_its_stand_in() -> None:
    doc = _compiled("egress-serviceentry-httpbin-ext")
    vhost = _vhost(doc, "httpbin.org:80")
    assert vhost["domains"] == ["httpbin.org", "httpbin.org:80"]
    assert vhost["routes"][0]["route"][0]["cluster"] == "httpbin.org|"
    cluster = doc["clusters"]["httpbin.org|"]
    assert [(e["address"], e["port"]) for e in cluster["endpoints"]] == [("127.0.0.1", 8100)]
    assert cluster["tls"] == {"mode": "DISABLE", "server_identities": []}  # outside the mesh: no mTLS


def test_without_a_stand_in_or_real_dns_there_is_no_endpoint() -> None:
    doc = _compiled("egress-serviceentry-httpbin-ext", hosts={})
    assert doc["clusters"]["httpbin.org|"]["endpoints"] == []  # 503 UH, never a real host
    real = _compiled("egress-serviceentry-httpbin-ext", hosts={}, real_dns=True)
    assert [(e["address"], e["port"]) for e in real["clusters"]["httpbin.org|"]["endpoints"]] == [
        ("httpbin.org", 80)]


def test_the_timeout_virtual_service_applies_to_the_external_host() -> None:
    doc = _compiled("egress-serviceentry-httpbin-ext", "egress-virtualservice-httpbin-ext-timeout")
    [route] = _vhost(doc, "httpbin.org:80")["routes"]
    assert route["timeout_ms"] == 3000
    assert route["route"] == [{"cluster": "httpbin.org|", "weight": 100, "headers": None}]
    assert [v["name"] for v in doc["outbound"]["virtual_hosts"]].count("httpbin.org") == 0  # no second one


def test_an_https_service_entry_adds_no_http_virtual_host() -> None:
    doc = _compiled("egress-serviceentry-google")
    assert not [v for v in doc["outbound"]["virtual_hosts"] if "www.google.com" in v["domains"]]


def test_a_gateway_gets_no_service_entry_host_only_its_cluster() -> None:
    """A gateway serves only the hosts its Gateways bind; it can route to a ServiceEntry host (an egress
    gateway's routes, tests/config/test_egress_gateway.py), so it has the host's cluster."""
    doc = _compiled("egress-serviceentry-httpbin-ext", node=GATEWAY_NODE)
    assert not [v for v in doc["outbound"]["virtual_hosts"] if "httpbin.org" in v["domains"]]
    assert [(e["address"], e["port"]) for e in doc["clusters"]["httpbin.org|"]["endpoints"]] == [
        ("127.0.0.1", 8100)]


def test_static_endpoints_and_export_to() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{address: 127.0.0.2, ports: {http: 9999}}, {address: 127.0.0.3}]
"""
    doc = compile_snapshot(load_resources(text), RegistryView(), node_for("productpage"))
    assert [(e["address"], e["port"]) for e in doc["clusters"]["api.example.com|"]["endpoints"]] == [
        ("127.0.0.2", 9999), ("127.0.0.3", 80)]
    hidden = text.replace("location: MESH_EXTERNAL", "location: MESH_EXTERNAL\n  exportTo: [other]")
    doc = compile_snapshot(load_resources(hidden), RegistryView(), node_for("productpage"))
    assert "api.example.com|" not in doc["clusters"]


@pytest.mark.parametrize(("change", "field"), [
    ("resolution: DNS", "spec.resolution"),
    ("location: MESH_EXTERNAL", "spec.location"),
])
def test_bad_enum_values_are_named(change: str, field: str) -> None:
    sample_text = (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\n"
        "spec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n"
        "  resolution: DNS\n  location: MESH_EXTERNAL\n"
    ).replace(change, change.split(":", maxsplit=1)[0] + ": BOGUS")
    with pytest.raises(ConfigError) as error:
        load_resources(sample_text)
    assert field in str(error.value)


# -- Istio's "Egress TLS Origination" task --------------------------------------------------------

CNN = {"edition.cnn.com:80": "127.0.0.1:8100", "edition.cnn.com:443": "127.0.0.1:8101"}
STAND_IN_CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_before_origination_port_80_goes_to_the_plain_http_stand_in() -> None:
    doc = _compiled("egress-tls-origination-serviceentry", hosts=CNN)
    cluster = doc["clusters"]["edition.cnn.com|"]
    assert [(e["address"], e["port"]) for e in cluster["endpoints"]] == [("127.0.0.1", 8100)]
    assert cluster["tls"]["mode"] == "DISABLE"


def test_the_task_s_destination_rule_originates_tls_to_the_target_port() -> None:
    doc = _compiled("egress-tls-origination", hosts=CNN)
    assert _vhost(doc, "edition.cnn.com:80")["routes"][0]["route"][0]["cluster"] == "edition.cnn.com|"
    cluster = doc["clusters"]["edition.cnn.com|"]
    # targetPort 443: the endpoint is the HTTPS stand-in, reached with TLS and the host as SNI
    assert [(e["address"], e["port"]) for e in cluster["endpoints"]] == [("127.0.0.1", 8101)]
    assert cluster["tls"] == {"mode": "SIMPLE", "server_identities": [], "sni": "edition.cnn.com",
                              "subject_alt_names": [], "insecure_skip_verify": False}


def test_the_stand_in_ca_is_in_the_snapshot() -> None:
    registry = RegistryView(external_hosts=tuple(CNN.items()), external_ca=STAND_IN_CA)
    doc = compile_snapshot(sample("egress-tls-origination"), registry, node_for("productpage"))
    assert doc["egress"]["ca_pem"] == STAND_IN_CA
    assert "ca_pem" not in _compiled("egress-tls-origination", hosts=CNN)["egress"]  # no stand-ins: absent


def test_port_level_settings_apply_to_their_port_only() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.com
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    portLevelSettings:
    - port: {number: 9999}
      tls: {mode: SIMPLE}
    - port: {number: 8080}
      loadBalancer: {simple: LEAST_REQUEST}
      tls: {mode: SIMPLE, sni: api.internal, subjectAltNames: [api.example.com]}
"""
    doc = compile_snapshot(load_resources(text), RegistryView(), node_for("productpage"))
    cluster = doc["clusters"]["api.example.com|"]
    assert cluster["lb"] == "LEAST_REQUEST"
    assert cluster["tls"]["sni"] == "api.internal"
    assert cluster["tls"]["subject_alt_names"] == ["api.example.com"]
    Snapshot.from_json(doc)


MUTUAL_DR = """apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: originate-mtls-for-nginx
spec:
  workloadSelector:
    matchLabels:
      app: sleep
  host: my-nginx.mesh-external.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: MUTUAL
        credentialName: client-credential
        sni: my-nginx.mesh-external.svc.cluster.local
"""


def _client_credential(namespace: str) -> str:
    root, root_key = issue_ca("example.com")
    cert, key = issue_server(["client.example.com"], root, root_key)
    data = {"tls.crt": pem(cert), "tls.key": key_pem(key), "ca.crt": pem(root)}
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": encoded,
                           "metadata": {"name": "client-credential", "namespace": namespace}})


def test_mutual_tls_origination_takes_the_credential_of_the_clients_namespace() -> None:
    registry = RegistryView(services=(Service("my-nginx", "mesh-external", 443),))
    resources = load_resources(MUTUAL_DR + "---\n" + _client_credential("default"))
    sleep = Node(instance="sleep-0", workload="sleep", service="sleep", labels={"app": "sleep"})
    tls = compile_snapshot(resources, registry, sleep)["clusters"]["my-nginx.mesh-external|"]["tls"]
    assert (tls["mode"], tls["sni"], tls["credential"]) == (
        "MUTUAL", "my-nginx.mesh-external.svc.cluster.local", "client-credential")
    assert "BEGIN CERTIFICATE" in tls["client_cert_pem"] and "PRIVATE KEY" in tls["client_key_pem"]
    assert "BEGIN CERTIFICATE" in tls["ca_pem"]
    Snapshot.from_json(compile_snapshot(resources, registry, sleep))  # the proxy builds its context
    # the workloadSelector: productpage does not get the rule (auto mTLS finds no sidecar: plain)
    other = compile_snapshot(resources, registry, node_for("productpage"))
    assert other["clusters"]["my-nginx.mesh-external|"]["tls"]["mode"] == "DISABLE"
    # a Secret of another namespace is not the client's: the PEMs are null (the server refuses it)
    elsewhere = load_resources(MUTUAL_DR + "---\n" + _client_credential("mesh-external"))
    tls = compile_snapshot(elsewhere, registry, sleep)["clusters"]["my-nginx.mesh-external|"]["tls"]
    assert (tls["mode"], tls["client_cert_pem"], tls["client_key_pem"]) == ("MUTUAL", None, None)
    Snapshot.from_json(compile_snapshot(elsewhere, registry, sleep))


def test_client_certificate_file_paths_are_named_as_unsupported() -> None:
    text = ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\n"
            "spec:\n  host: a.example.com\n  trafficPolicy:\n    portLevelSettings:\n"
            "    - port: {number: 443}\n      tls: {mode: MUTUAL, clientCertificate: /etc/c.pem}\n")
    with pytest.raises(ConfigError) as error:
        load_resources(text)
    assert "spec.trafficPolicy.portLevelSettings[0].tls" in str(error.value)
    assert "clientCertificate" in str(error.value)

