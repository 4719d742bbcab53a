"""Istio's "Egress Gateways" task (HTTP part) compiled: a match's ``gateways`` and ``port`` pick the routes
of each proxy; the sidecars send edition.cnn.com to the egress gateway, the egress gateway to the stand-in."""

from __future__ import annotations

from typing import Any

from meshkit.config.compile import compile_snapshot
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.proxy.snapshot import Snapshot
from tests.config.bookinfo import node_for, sample

TASK = ("egress-gateway-serviceentry-cnn", "egress-gateway-cnn", "egress-gateway-virtualservice-cnn")
EGRESS = Node("istio-egressgateway-0", namespace="istio-system", kind="gateway",
              workload="istio-egressgateway", labels={"app": "istio-egressgateway", "istio": "egressgateway"})
INGRESS = Node("istio-ingressgateway-0", namespace="istio-system", kind="gateway",
               labels={"istio": "ingressgateway"})
STAND_IN = "127.0.0.1:8100"


def _registry() -> RegistryView:
    gateway = Service("istio-egressgateway", port=80, namespace="istio-system")
    endpoint = Endpoint(instance="istio-egressgateway-0", service="istio-egressgateway", address="127.0.0.1",
                        port=7081, namespace="istio-system", workload="istio-egressgateway",
                        labels={"app": "istio-egressgateway", "istio": "egressgateway"},
                        service_account="istio-egressgateway-service-account", has_sidecar=False)
    return RegistryView(services=(gateway,), endpoints=(endpoint,),
                        external_hosts=(("edition.cnn.com:80", STAND_IN),))


def _compiled(node: Node, *names: str) -> dict[str, Any]:
    doc = compile_snapshot(sample(*names), _registry(), node)
    Snapshot.from_json(doc)  # the proxy takes it
    return doc


def _routes(doc: dict[str, Any], domain: str) -> list[dict[str, Any]]:
    [vhost] = [v for v in doc["outbound"]["virtual_hosts"] if domain in v["domains"]]
    return vhost["routes"]


def test_a_sidecar_gets_the_mesh_route_to_the_egress_gateway_on_port_80() -> None:
    doc = _compiled(node_for("productpage"), *TASK)
    [route] = _routes(doc, "edition.cnn.com")
    assert route["source"].endswith("direct-cnn-through-egress-gateway#http[0]")
    assert route["match"] == [{"ignore_uri_case": False, "port": 80}]  # matched per request (the Host's port)
    assert route["route"][0]["cluster"] == "istio-egressgateway.istio-system|cnn"
    cluster = doc["clusters"]["istio-egressgateway.istio-system|cnn"]
    assert [(e["address"], e["port"]) for e in cluster["endpoints"]] == [("127.0.0.1", 7081)]


def test_the_egress_gateway_gets_its_own_route_to_the_external_host() -> None:
    doc = _compiled(EGRESS, *TASK)
    [vhost] = doc["outbound"]["virtual_hosts"]
    assert vhost["domains"] == ["edition.cnn.com"]
    [route] = vhost["routes"]
    assert route["source"].endswith("direct-cnn-through-egress-gateway#http[1]")
    assert route["match"] == [{"ignore_uri_case": False}]  # port 80 is the Gateway server's: resolved here
    assert route["route"][0]["cluster"] == "edition.cnn.com|"
    endpoints = doc["clusters"]["edition.cnn.com|"]["endpoints"]
    assert [(e["address"], e["port"]) for e in endpoints] == [("127.0.0.1", 8100)]


def test_a_port_no_server_of_the_gateway_has_keeps_the_route_off_the_gateway() -> None:
    gateway_match = "      - istio-egressgateway\n      port: 80"
    text = sample_text("egress-gateway-virtualservice-cnn").replace(gateway_match, gateway_match + "80")
    resources = [*sample("egress-gateway-serviceentry-cnn", "egress-gateway-cnn"), *load(text)]
    doc = compile_snapshot(resources, _registry(), EGRESS)
    [vhost] = doc["outbound"]["virtual_hosts"]
    assert vhost["routes"] == []  # no route: 404 NR at the egress gateway


def test_other_gateways_do_not_serve_the_host() -> None:
    doc = _compiled(INGRESS, *TASK)
    assert all("edition.cnn.com" not in v["domains"] for v in doc["outbound"]["virtual_hosts"])


def test_without_the_virtual_service_the_sidecar_goes_straight_to_the_stand_in() -> None:
    doc = _compiled(node_for("productpage"), *TASK[:2])
    [route] = _routes(doc, "edition.cnn.com")
    assert route["route"][0]["cluster"] == "edition.cnn.com|"


def sample_text(name: str) -> str:
    from tests.config.bookinfo import SAMPLES  # noqa: PLC0415

    return (SAMPLES / f"{name}.yaml").read_text(encoding="utf-8")


def load(text: str) -> list[Any]:
    from meshkit.config.loader import load_resources  # noqa: PLC0415

    return list(load_resources(text))


def test_analyze_knows_the_egress_gateway_and_service_entry_hosts() -> None:
    from meshkit.config.analyze import analyze  # noqa: PLC0415

    found = {(m.code, m.field) for m in analyze(sample(*TASK), _registry())}
    # edition.cnn.com is a ServiceEntry host, not "not a service in the registry"
    assert ("MK0103", "spec.http[1].route[0].destination.host") not in found
    assert not [code for code, _ in found if code == "MK0402"]  # the egress gateway is deployed
    without = [m for m in analyze(sample(*TASK), RegistryView()) if m.code == "MK0402"]
    assert [m.text for m in without] == [
        "selects the egress gateway, which is not running: start it with `meshkit deploy egressgateway`"]
