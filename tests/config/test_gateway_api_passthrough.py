"""The "Gateway API" tab of Istio's "Ingress Gateway without TLS Termination": a Gateway ``mygateway``
without a proxy of its own (the local mesh's ingress serves it) with a ``TLS`` Passthrough listener on
443 for ``nginx.example.com``, and the TLSRoute ``nginx`` to ``my-nginx:443``. The task's YAML, verbatim."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.gateway_api import KubeGateway, KubeTLSRoute
from meshkit.config.httproutes import with_status
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.config.resources import Resource
from meshkit.control.kinds import resolve_kind
from meshkit.proxy.snapshot import Snapshot
from tests.config.bookinfo import node_for

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    hostname: "nginx.example.com"
    port: 443
    protocol: TLS
    tls:
      mode: Passthrough
    allowedRoutes:
      namespaces:
        from: All
"""
TLS_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata:
  name: nginx
spec:
  parentRefs:
  - name: mygateway
  hostnames:
  - "nginx.example.com"
  rules:
  - backendRefs:
    - name: my-nginx
      port: 443
"""
SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: my-nginx
  labels:
    run: my-nginx
spec:
  ports:
  - port: 443
    protocol: TCP
  selector:
    run: my-nginx
"""
INGRESS = Node("istio-ingressgateway-0", namespace="istio-system", kind="gateway",
               labels={"app": "istio-ingressgateway", "istio": "ingressgateway"})
NGINX_ROUTE = {"name": "default/nginx#tls0", "sni_hosts": ["nginx.example.com"], "port": 443,
               "destinations": [{"host": "my-nginx.default.svc.cluster.local", "port": 443,
                                 "cluster": "my-nginx.default|", "weight": 100}]}


def registry() -> RegistryView:
    endpoint = Endpoint(instance="my-nginx-0", service="my-nginx", address="127.0.0.1", port=7380,
                        namespace="default", workload="my-nginx", labels={"run": "my-nginx"})
    return RegistryView(services=(Service("my-nginx", port=443, namespace="default"),), endpoints=(endpoint,))


def task(*texts: str) -> list[Resource]:
    return load_resources("\n---\n".join(texts))


def compiled(node: Node, resources: list[Resource]) -> dict[str, Any]:
    doc = compile_snapshot(resources, registry(), node)
    Snapshot.from_json(doc)  # the proxy takes it
    return doc


def test_the_ingress_passes_the_sni_through_to_my_nginx() -> None:
    resources = task(SERVICE, GATEWAY, TLS_ROUTE)
    ingress = compiled(INGRESS, resources)
    assert ingress["tls"]["routes"] == [NGINX_ROUTE]
    assert ingress["outbound"]["virtual_hosts"] == []  # a TLS listener serves no HTTP host
    # the sidecars are not given the gateway's route (it is bound to the Gateway, not to mesh)
    assert compiled(node_for("productpage"), resources)["tls"]["routes"] == []


def test_without_the_tlsroute_or_the_gateway_no_name_is_passed_through() -> None:
    assert compiled(INGRESS, task(SERVICE, GATEWAY))["tls"]["routes"] == []
    assert compiled(INGRESS, task(SERVICE, TLS_ROUTE))["tls"]["routes"] == []


def test_a_route_hostname_the_listener_does_not_take_is_not_passed_through() -> None:
    other = TLS_ROUTE.replace('- "nginx.example.com"', '- "other.example.com"')
    resources = task(SERVICE, GATEWAY, other)
    assert compiled(INGRESS, resources)["tls"]["routes"] == []
    [route] = [r for r in resources if isinstance(r, KubeTLSRoute)]
    [parent] = with_status(route, resources, registry())["status"]["parents"]
    accepted = parent["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "NoMatchingListenerHostname"), accepted


def test_status_programmed_with_the_ingress_address_and_the_route_accepted() -> None:
    resources = task(SERVICE, GATEWAY, TLS_ROUTE)
    [gateway] = [r for r in resources if isinstance(r, KubeGateway)]
    status = with_status(gateway, resources, registry())["status"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Accepted": "True", "Programmed": "True"}
    assert status["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    [listener] = status["listeners"]
    assert listener["attachedRoutes"] == 1
    assert listener["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]
    [route] = [r for r in resources if isinstance(r, KubeTLSRoute)]
    [parent] = with_status(route, resources, registry())["status"]["parents"]
    assert [(c["type"], c["status"]) for c in parent["conditions"]] == [("Accepted", "True"),
                                                                      ("ResolvedRefs", "True")]
    assert [m for m in analyze(resources, registry()) if m.code.startswith("MK041")] == []


def test_a_missing_backend_is_named_in_status_and_by_analyze() -> None:
    resources = task(GATEWAY, TLS_ROUTE)  # no my-nginx Service
    [route] = [r for r in resources if isinstance(r, KubeTLSRoute)]
    [parent] = with_status(route, resources, RegistryView())["status"]["parents"]
    resolved = parent["conditions"][1]
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
    assert "backend(default/my-nginx) not found" in resolved["message"]
    found = {(m.code, m.resource, m.field) for m in analyze(resources, RegistryView())}
    assert ("MK0411", "TLSRoute/default/nginx", "spec.rules[0].backendRefs[0].name") in found, found


def test_the_task_names_resolve() -> None:
    assert resolve_kind("tlsroute") == "TLSRoute"
    assert resolve_kind("gtw") == "Gateway.gateway.networking.k8s.io"


@pytest.mark.parametrize(("change", "field", "text"), [
    (("  rules:\n  - backendRefs:\n    - name: my-nginx\n      port: 443\n", "  rules: []\n"),
     "spec.rules", "must not be empty"),
    (("  parentRefs:\n  - name: mygateway\n", "  parentRefs: []\n"), "spec.parentRefs", "must not be empty"),
    (("      port: 443\n", "      port: 70000\n"), "spec.rules[0].backendRefs[0].port", "65535"),
    (("  hostnames:", "  sniHosts:"), "spec.sniHosts", ""),
])
def test_a_bad_tlsroute_is_refused_with_its_field_named(change: tuple[str, str], field: str,
                                                         text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_resources(TLS_ROUTE.replace(*change))
    [message] = caught.value.messages
    assert message.resource == "TLSRoute/default/nginx" and message.field == field, message
    assert text in message.text, message
