"""The "Gateway API" tab of Istio's "Egress Gateways" task compiled, with its YAML verbatim: a Gateway with
its own proxy (``cnn-egress-gateway-istio``), routes attached to the ServiceEntry ``cnn`` for the sidecars,
``Hostname`` backends for the gateway, HTTPRoutes (HTTP part) and TLSRoutes (HTTPS part)."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.gateway_api import KubeGateway
from meshkit.config.gateway_deployments import deployed_gateways, proxy_labels
from meshkit.config.httproutes import with_status
from meshkit.config.loader import ConfigError, load_resources
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.control.kinds import resolve_kind
from meshkit.proxy.snapshot import Snapshot
from tests.config.bookinfo import node_for, sample

HTTP_TASK = ("egress-gateway-serviceentry-cnn", "egress-gateway-api-cnn", "egress-gateway-api-httproutes-cnn")
HTTPS_TASK = ("egress-gateway-https-serviceentry-cnn", "egress-gateway-api-https-cnn")
LABELS = {"gateway.networking.k8s.io/gateway-name": "cnn-egress-gateway",
          "istio.io/gateway-name": "cnn-egress-gateway", "app": "cnn-egress-gateway-istio"}
GATEWAY = Node("cnn-egress-gateway-istio-0", namespace="default", kind="gateway",
               workload="cnn-egress-gateway-istio", labels=LABELS, service_account="cnn-egress-gateway-istio")
INGRESS = Node("istio-ingressgateway-0", namespace="istio-system", kind="gateway",
               labels={"istio": "ingressgateway"})
STAND_IN, STAND_IN_TLS = "127.0.0.1:8100", "127.0.0.1:8101"


def _registry() -> RegistryView:
    """What the runtime registers for the Gateway's proxy (`meshkit.runtime.kube_gateways`)."""
    service = Service("cnn-egress-gateway-istio", port=80, namespace="default")
    endpoint = Endpoint(instance="cnn-egress-gateway-istio-0", service="cnn-egress-gateway-istio",
                        address="127.0.0.1", port=7083, namespace="default",
                        workload="cnn-egress-gateway-istio", labels=LABELS,
                        service_account="cnn-egress-gateway-istio", has_sidecar=False)
    return RegistryView(services=(service,), endpoints=(endpoint,),
                        external_hosts=(("edition.cnn.com:80", STAND_IN),
                                        ("edition.cnn.com:443", STAND_IN_TLS)))


def _compiled(node: Node, *names: str) -> dict[str, Any]:
    doc = compile_snapshot(sample(*names), _registry(), node)
    Snapshot.from_json(doc)  # the proxy takes it
    return doc


def _vhost(doc: dict[str, Any], domain: str) -> dict[str, Any]:
    [vhost] = [v for v in doc["outbound"]["virtual_hosts"] if domain in v["domains"]]
    return vhost


def test_the_gateway_has_its_own_proxy_with_istios_names_and_labels() -> None:
    [gateway] = deployed_gateways(sample(*HTTP_TASK))
    assert gateway.deployment_name == "cnn-egress-gateway-istio"
    assert proxy_labels(gateway)["gateway.networking.k8s.io/gateway-name"] == "cnn-egress-gateway"
    # the ingress-bound Gateways of the other tabs keep being served by the one ingress
    assert deployed_gateways(sample("gateway-api-bookinfo-gateway")) == []
    assert resolve_kind("gtw") == "Gateway.gateway.networking.k8s.io"  # kubectl delete gtw cnn-egress-gateway
    assert resolve_kind("tlsroute") == "TLSRoute"


def test_sleep_sends_edition_cnn_com_to_the_gateway_service() -> None:
    doc = _compiled(node_for("sleep"), *HTTP_TASK)
    [route] = _vhost(doc, "edition.cnn.com")["routes"]
    assert route["source"] == "HTTPRoute/default/direct-cnn-to-egress-gateway#http[0]"
    assert route["route"][0]["cluster"] == "cnn-egress-gateway-istio.default|"
    endpoints = doc["clusters"]["cnn-egress-gateway-istio.default|"]["endpoints"]
    assert [(e["address"], e["port"]) for e in endpoints] == [("127.0.0.1", 7083)]


def test_the_gateway_forwards_to_the_external_host_with_istios_route_name() -> None:
    doc = _compiled(GATEWAY, *HTTP_TASK)
    [vhost] = doc["outbound"]["virtual_hosts"]
    assert vhost["domains"] == ["edition.cnn.com"]
    [route] = vhost["routes"]
    assert route["name"] == "default.forward-cnn-from-egress-gateway.0"  # as in the task's access log
    assert route["route"][0]["cluster"] == "edition.cnn.com|"
    endpoints = doc["clusters"]["edition.cnn.com|"]["endpoints"]
    assert [f"{e['address']}:{e['port']}" for e in endpoints] == [STAND_IN]


def test_the_ingress_does_not_serve_the_egress_gateways_host() -> None:
    doc = _compiled(INGRESS, *HTTP_TASK)
    assert [v for v in doc["outbound"]["virtual_hosts"] if "edition.cnn.com" in v["domains"]] == []


def test_the_routes_are_accepted_and_resolved_and_analyze_is_quiet() -> None:
    resources = sample(*HTTP_TASK)
    assert [m for m in analyze(resources, _registry()) if m.code.startswith("MK041")] == []
    for resource in resources:
        if resource.kind in ("HTTPRoute", "Gateway") and resource.api_version.startswith("gateway."):
            status = with_status(resource, resources, RegistryView())["status"]
            conditions = [c for p in status.get("parents", [status]) for c in p["conditions"]]
            assert all(c["status"] == "True" for c in conditions), (resource.ref, conditions)
    [gateway] = [r for r in resources if isinstance(r, KubeGateway)]
    programmed = with_status(gateway, resources, RegistryView())["status"]["conditions"][1]
    assert "cnn-egress-gateway-istio" in programmed["message"]


def test_https_sleep_sends_the_sni_to_the_gateway_and_the_gateway_to_the_host() -> None:
    sleep = _compiled(node_for("sleep"), *HTTPS_TASK)["tls"]
    assert sleep["routes"] == [{
        "name": "default/direct-cnn-to-egress-gateway#tls0", "sni_hosts": ["edition.cnn.com"], "port": 443,
        "destinations": [{"host": "cnn-egress-gateway-istio.default.svc.cluster.local", "port": 443,
                          "cluster": "cnn-egress-gateway-istio.default|", "weight": 100}]}]
    gateway = _compiled(GATEWAY, *HTTPS_TASK)
    assert gateway["tls"]["routes"] == [{
        "name": "default/forward-cnn-from-egress-gateway#tls0", "sni_hosts": ["edition.cnn.com"], "port": 443,
        "destinations": [{"host": "edition.cnn.com", "port": 443, "cluster": None, "weight": 100}]}]
    assert gateway["outbound"]["virtual_hosts"] == []  # a TLS listener serves no HTTP host
    assert _compiled(INGRESS, *HTTPS_TASK)["tls"]["routes"] == []
    resources = sample(*HTTPS_TASK)
    assert [m for m in analyze(resources, _registry()) if m.code.startswith("MK041")] == []
    for route in (r for r in resources if r.kind == "TLSRoute"):
        [parent] = with_status(route, resources, RegistryView())["status"]["parents"]
        assert [c["status"] for c in parent["conditions"]] == ["True", "True"], parent


def test_a_hostname_backend_no_service_entry_declares_is_reported() -> None:
    resources = sample("egress-gateway-api-cnn", "egress-gateway-api-httproutes-cnn")  # no ServiceEntry
    found = {(m.code, m.resource) for m in analyze(resources, _registry())}
    assert ("MK0410", "HTTPRoute/default/direct-cnn-to-egress-gateway") in found
    assert ("MK0411", "HTTPRoute/default/forward-cnn-from-egress-gateway") in found


@pytest.mark.parametrize(("yaml", "text"), [
    ("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g, annotations: {networking.istio.io/service-type: ClusterIP}}
spec:
  gatewayClassName: istio
  listeners:
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c}]}}
""", "served only by the local mesh's ingress"),
    ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: g}]
  rules: [{backendRefs: [{kind: Hostname, name: edition.cnn.com, port: 80}]}]
""", "needs group networking.istio.io"),
])
def test_what_the_local_mesh_does_not_serve_is_refused_by_name(yaml: str, text: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_resources(yaml)
    assert text in str(error.value)
