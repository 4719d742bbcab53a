"""Gateway servers with ``tls.mode: ISTIO_MUTUAL`` and what the compiler makes of "Egress Gateways with TLS
Origination": the egress gateway's ``gateway_tls.istio_mutual``, the sidecar's ISTIO_MUTUAL cluster with its
``sni``, the gateway's cluster for edition.cnn.com port 443 (TLS originated), the egress gateway Service's
port 443, and the refusals (Istio's validation text). The YAML is the task's, taken from the e2e test."""

from __future__ import annotations

import re
from typing import Any

import pytest

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.gateway_deployments import internal_config
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.proxy.snapshot import Snapshot, SnapshotError
from meshkit.proxy.tls.gateway_mutual import MutualServers
from tests.config.bookinfo import node_for
from tests.e2e import test_egress_gateway_tls_origination as task
from tests.e2e import test_egress_gateway_tls_origination_api as api_tab

EGRESS = Node("istio-egressgateway-0", namespace="istio-system", kind="gateway",
              workload="istio-egressgateway", labels={"app": "istio-egressgateway", "istio": "egressgateway"})
GATEWAY_ID = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"


def yaml_of(script: str) -> str:
    """The YAML of a ``meshkit apply -f - <<EOF ... EOF`` step of the task."""
    return "\n---\n".join(part.split("\nEOF")[0] for part in script.split("<<EOF\n")[1:]) + "\n"


def _registry() -> RegistryView:
    gateway = Service("istio-egressgateway", port=80, namespace="istio-system")
    endpoint = Endpoint(instance="istio-egressgateway-0", service="istio-egressgateway", address="127.0.0.1",
                        port=7082, namespace="istio-system", workload="istio-egressgateway",
                        labels={"app": "istio-egressgateway", "istio": "egressgateway"},
                        service_account="istio-egressgateway-service-account", has_sidecar=False)
    return RegistryView(services=(gateway,), endpoints=(endpoint,),
                        external_hosts=(("edition.cnn.com:80", "127.0.0.1:8100"),
                                        ("edition.cnn.com:443", "127.0.0.1:8101")))


CNN = (task.SERVICE_ENTRY, task.GATEWAY_CNN, task.VIRTUAL_SERVICE_CNN, task.ORIGINATE_TLS_CNN)


def _compiled(node: Node, *scripts: str) -> dict[str, Any]:
    doc = compile_snapshot(load_resources("---\n".join(map(yaml_of, scripts))), _registry(), node)
    Snapshot.from_json(doc)  # the proxy takes it
    return doc


def test_the_egress_gateway_takes_the_mesh_s_mutual_tls_for_edition_cnn_com() -> None:
    doc = _compiled(EGRESS, *CNN)
    assert doc["gateway_tls"]["servers"] == []  # no Secret-backed HTTPS server
    assert doc["gateway_tls"]["istio_mutual"] == {
        "servers": [{"gateway": "default/istio-egressgateway", "server": 0, "port": 80,
                     "hosts": ["edition.cnn.com"]}],
        "plaintext": False}  # its only server: a plaintext caller is refused
    loaded = Snapshot.from_json(doc).gateway_mutual
    assert loaded.covers("edition.cnn.com") and not loaded.covers("www.google.com") and not loaded.plaintext


def test_the_gateway_originates_tls_to_port_443_through_its_own_cluster() -> None:
    doc = _compiled(EGRESS, *CNN)
    [vhost] = [v for v in doc["outbound"]["virtual_hosts"] if "edition.cnn.com" in v["domains"]]
    assert [d["cluster"] for r in vhost["routes"] for d in r["route"]] == ["outbound|443||edition.cnn.com"]
    cluster = doc["clusters"]["outbound|443||edition.cnn.com"]
    assert cluster["tls"]["mode"] == "SIMPLE" and cluster["tls"]["sni"] == "edition.cnn.com"
    assert [(e["address"], e["port"]) for e in cluster["endpoints"]] == [("127.0.0.1", 8101)]
    assert doc["clusters"]["edition.cnn.com|"]["tls"]["mode"] == "DISABLE"  # port 80 stays plain


def test_the_sidecar_sends_istio_mutual_with_the_sni_to_the_gateway_subset() -> None:
    doc = _compiled(node_for("productpage"), *CNN)
    [vhost] = [v for v in doc["outbound"]["virtual_hosts"] if "edition.cnn.com" in v["domains"]]
    assert [d["cluster"] for d in vhost["routes"][0]["route"]] == ["istio-egressgateway.istio-system|cnn"]
    tls = doc["clusters"]["istio-egressgateway.istio-system|cnn"]["tls"]
    assert tls == {"mode": "ISTIO_MUTUAL", "server_identities": [GATEWAY_ID], "sni": "edition.cnn.com"}
    assert Snapshot.from_json(doc).upstream_sni == {"istio-egressgateway.istio-system|cnn": "edition.cnn.com"}


def test_the_subset_s_port_443_gets_its_own_cluster_and_the_analyzer_knows_the_port() -> None:
    scripts = (task.GATEWAY_NGINX, task.VIRTUAL_SERVICE_NGINX)
    doc = _compiled(node_for("productpage"), *scripts)
    name = "outbound|443|nginx|istio-egressgateway.istio-system.svc.cluster.local"
    [vhost] = [v for v in doc["outbound"]["virtual_hosts"]
               if "my-nginx.mesh-external.svc.cluster.local" in v["domains"]]
    assert [d["cluster"] for d in vhost["routes"][0]["route"]] == [name]
    assert doc["clusters"][name]["tls"]["mode"] == "ISTIO_MUTUAL"
    assert doc["clusters"][name]["tls"]["sni"] == "my-nginx.mesh-external.svc.cluster.local"
    # Istio's egress gateway Service has 80 and 443
    resources = load_resources("---\n".join(map(yaml_of, scripts)))
    assert [m for m in analyze(resources, _registry()) if m.code == "MK0118"] == []


def test_a_gateway_with_another_plain_http_server_still_takes_plaintext() -> None:
    plain = task.GATEWAY_CNN.replace("  servers:\n", "  servers:\n  - port: {number: 8080, name: http, "
                                     "protocol: HTTP}\n    hosts: [www.google.com]\n", 1)
    assert _compiled(EGRESS, plain)["gateway_tls"]["istio_mutual"]["plaintext"] is True


@pytest.mark.parametrize(("change", "text"), [
    (("      mode: ISTIO_MUTUAL\n", "      mode: ISTIO_MUTUAL\n      credentialName: cnn-cert\n"),
     "ISTIO_MUTUAL TLS cannot have associated credentialName"),
    (("      protocol: HTTPS\n", "      protocol: HTTP\n"), "tls.mode ISTIO_MUTUAL needs protocol HTTPS"),
])
def test_a_bad_istio_mutual_server_is_refused_by_name(change: tuple[str, str], text: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_resources(yaml_of(task.GATEWAY_CNN.replace(*change, 1)))
    assert text in str(error.value) and "Gateway/default/istio-egressgateway" in str(error.value)


def test_a_gateway_api_listener_with_istio_s_istio_mutual_option() -> None:
    resources = load_resources(yaml_of(api_tab.GATEWAY))
    [gateway] = [r for r in internal_config(resources) if r.kind == "Gateway"]
    [server] = gateway.spec.servers
    assert (server.port.number, server.hosts, server.tls.mode) == (80, ["edition.cnn.com"], "ISTIO_MUTUAL")
    refused = {
        "certificateRefs": ("        gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL\n",
                            "        gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL\n"
                            "      certificateRefs: [{name: cnn-cert}]\n"),
        "own gateway proxy": ("  annotations:\n    networking.istio.io/service-type: ClusterIP\n", ""),
        "not supported by meshkit": ("tls-terminate-mode: ISTIO_MUTUAL", "tls-terminate-mode: MUTUAL"),
    }
    for text, change in refused.items():
        with pytest.raises(ConfigError) as error:
            load_resources(yaml_of(api_tab.GATEWAY.replace(*change, 1)))
        assert text in str(error.value), (text, str(error.value))


@pytest.mark.parametrize(("section", "text"), [
    ({"servers": "x"}, "gateway_tls.istio_mutual: expected"),
    ({"servers": [{"hosts": []}], "plaintext": False}, "gateway_tls.istio_mutual.servers[0].hosts"),
    ({"servers": [{"hosts": ["a"]}], "plaintext": "no"}, "gateway_tls.istio_mutual.plaintext"),
])
def test_the_proxy_names_a_bad_istio_mutual_section(section: dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(text)):
        MutualServers.from_snapshot(section)
    doc = _compiled(EGRESS, *CNN)
    doc["gateway_tls"]["istio_mutual"] = section
    with pytest.raises(SnapshotError, match=re.escape(text)):
        Snapshot.from_json(doc)
