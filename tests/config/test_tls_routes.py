"""VirtualService ``tls`` routes and ServiceEntry TLS ports compiled (snapshot ``tls``): Istio's "Egress
Gateways" task, HTTPS part, with its YAML verbatim; what each proxy is given, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import ConfigError, load_resources
from meshkit.proxy.snapshot import Snapshot
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


# Istio's "TCP Traffic Shifting" task with its gateway removed: the VirtualService is for ``mesh``
MESH_TCP = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo-destination, namespace: shift}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: shift}
spec:
  hosts: [tcp-echo]
  tcp:
  - match:
    - port: 9000
    route:
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v1}
      weight: 80
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v2}
      weight: 20
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: shift}
spec:
  ports: [{name: tcp, port: 9000}, {name: tcp-other, port: 9001}]
  selector: {app: tcp-echo}
"""


def _tcp_echo_registry() -> Any:
    from meshkit.config.registry import Endpoint, RegistryView, Service  # noqa: PLC0415

    endpoints = tuple(Endpoint(instance=f"tcp-echo-{v}-0", workload=f"tcp-echo-{v}", service="tcp-echo",
                               namespace="shift", address="127.0.0.1", port=port,
                               labels={"app": "tcp-echo", "version": v})
                      for v, port in (("v1", 7001), ("v2", 7002)))
    return RegistryView(services=(Service("tcp-echo", port=9000, namespace="shift"),), endpoints=endpoints)


def test_a_sidecar_gets_the_mesh_tcp_routes_by_host_and_port_then_each_service_ports_default() -> None:
    curl = node_for("curl", namespace="shift")
    doc = compile_snapshot(load_resources(MESH_TCP), _tcp_echo_registry(), curl)
    Snapshot.from_json(doc)  # the proxy takes it
    fqdn = "tcp-echo.shift.svc.cluster.local"
    names = ["tcp-echo", "tcp-echo.shift", "tcp-echo.shift.svc", fqdn]
    assert doc["tcp"]["routes"] == [
        {"name": "shift/tcp-echo#tcp0", "hosts": names, "port": 9000, "destinations": [
            {"host": fqdn, "port": 9000, "cluster": "tcp-echo.shift|v1", "weight": 80},
            {"host": fqdn, "port": 9000, "cluster": "tcp-echo.shift|v2", "weight": 20}]},
        *({"name": f"{fqdn}:{port}", "hosts": names, "port": port,
           "destinations": [{"host": fqdn, "port": port, "cluster": "tcp-echo.shift|", "weight": 100}]}
          for port in (9000, 9001)),
    ]
    assert {"tcp-echo.shift|v1", "tcp-echo.shift|v2"} <= set(doc["clusters"])
    # from another namespace the short name is not this service's (Kubernetes DNS), svc.ns still is
    other = compile_snapshot(load_resources(MESH_TCP), _tcp_echo_registry(), node_for("curl"))
    assert [r["hosts"] for r in other["tcp"]["routes"]] == [names[1:]] * 3


def test_a_tcp_route_for_a_gateway_only_or_other_source_labels_is_not_a_sidecars() -> None:
    for change in ("  gateways: [tcp-echo-gateway]\n  tcp:", "  tcp:"):
        text = MESH_TCP.replace("  tcp:", change, 1)
        if change == "  tcp:":
            text = text.replace("    - port: 9000", "    - port: 9000\n      sourceLabels: {app: other}")
        curl = node_for("curl", namespace="shift")
        doc = compile_snapshot(load_resources(text), _tcp_echo_registry(), curl)
        assert [r["name"] for r in doc["tcp"]["routes"]] == [
            "tcp-echo.shift.svc.cluster.local:9000", "tcp-echo.shift.svc.cluster.local:9001"], change
