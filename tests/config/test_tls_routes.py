"""VirtualService ``tls`` routes and ServiceEntry TLS ports compiled (snapshot ``tls``): Istio's "Egress
Gateways" task, HTTPS part, with its YAML verbatim; what each proxy is given, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import ConfigError, load_resources
from tests.config.bookinfo import node_for, sample
from tests.config.test_egress_gateway import EGRESS, INGRESS, _registry

TASK = ("egress-gateway-https-serviceentry-cnn", "egress-gateway-https-cnn")


def _tls(node: Any, *names: str) -> dict[str, Any]:
    return compile_snapshot(sample(*names), _registry(), node)["tls"]


def test_the_sidecars_send_the_sni_to_the_egress_gateway_subset() -> None:
    tls = _tls(node_for("sleep"), *TASK)
    assert tls["hosts"] == ["edition.cnn.com:443"]
    assert tls["routes"] == [{
        "name": "default/direct-cnn-through-egress-gateway#tls0", "sni_hosts": ["edition.cnn.com"],
        "port": 443, "destinations": [{
            "host": "istio-egressgateway.istio-system.svc.cluster.local", "port": 443,
            "cluster": "istio-egressgateway.istio-system|cnn", "weight": 100}],
    }]


def test_the_egress_gateway_passes_it_on_to_the_external_host() -> None:
    tls = _tls(EGRESS, *TASK)
    assert tls["routes"] == [{
        "name": "default/direct-cnn-through-egress-gateway#tls1", "sni_hosts": ["edition.cnn.com"],
        "port": 443,
        "destinations": [{"host": "edition.cnn.com", "port": 443, "cluster": None, "weight": 100}],
    }]
    # its HTTP listener serves nothing for it: a tls-only VirtualService claims no HTTP host
    doc = compile_snapshot(sample(*TASK), _registry(), EGRESS)
    assert doc["outbound"]["virtual_hosts"] == []
    # the sidecars' HTTP to edition.cnn.com:80 is not taken by the tls-only VirtualService either
    sidecar = compile_snapshot(sample(*TASK), _registry(), node_for("sleep"))
    assert not [v for v in sidecar["outbound"]["virtual_hosts"] if "edition.cnn.com" in v["domains"]]


def test_a_gateway_the_passthrough_server_does_not_select_gets_nothing() -> None:
    assert _tls(INGRESS, *TASK)["routes"] == []


def test_the_gateway_narrows_the_sni_to_its_server_hosts() -> None:
    resources = load_resources("""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [en.wikipedia.org]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wiki}
spec:
  hosts: ["*.wikipedia.org"]
  gateways: [istio-system/egress]
  tls:
  - match: [{sniHosts: ["*.wikipedia.org"], port: 443}]
    route: [{destination: {host: www.wikipedia.org, port: {number: 443}}}]
  - match: [{sniHosts: ["*.wikipedia.org"], port: 8443}]
    route: [{destination: {host: www.wikipedia.org}}]
""")
    tls = compile_snapshot(resources, _registry(), EGRESS)["tls"]
    assert [(r["sni_hosts"], r["port"]) for r in tls["routes"]] == [(["en.wikipedia.org"], 443)]


def test_service_entry_tls_ports_are_registered_hosts_and_http_ports_are_not() -> None:
    tls = _tls(node_for("sleep"), "egress-gateway-serviceentry-cnn", "egress-serviceentry-google")
    assert tls["hosts"] == ["edition.cnn.com:443", "www.google.com:443"]
    assert tls["routes"] == []


@pytest.mark.parametrize(("server", "field"), [
    ("{port: {number: 443, name: tls, protocol: TLS}, hosts: ['*']}", "spec.servers[0]"),
    ("{port: {number: 443, name: tls, protocol: TLS}, hosts: ['*'], tls: {mode: SIMPLE}}", "spec.servers[0]"),
    ("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*'], tls: {mode: PASSTHROUGH}}",
     "spec.servers[0]"),
])
def test_a_tls_server_that_would_terminate_is_refused_with_its_field(server: str, field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_resources(f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: egressgateway}}
  servers: [{server}]
""")
    assert [m.field for m in refused.value.messages] == [field], refused.value.messages


def test_a_tls_route_needs_sni_hosts() -> None:
    with pytest.raises(ConfigError) as refused:
        load_resources("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v}
spec:
  hosts: [edition.cnn.com]
  tls:
  - match: [{port: 443}]
    route: [{destination: {host: edition.cnn.com}}]
""")
    assert [m.field for m in refused.value.messages] == ["spec.tls[0].match[0].sniHosts"]
