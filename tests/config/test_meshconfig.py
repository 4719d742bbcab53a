"""Istio's mesh config ConfigMap and ``--set meshConfig...``: what the compiler takes from them."""

from __future__ import annotations

import pytest

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.meshconfig import ConfigMap, mesh_config_map, set_values
from meshkit.config.messages import ConfigError, Message
from meshkit.config.registry import Node, RegistryView
from meshkit.config.workloads import plan_workloads
from meshkit.runtime.manifests import specs_of
from tests.config.bookinfo import node_for

# Istio's own form (what `kubectl get cm istio -n istio-system -o yaml` shows, trimmed)
ISTIO_CONFIG_MAP = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |-
    accessLogFile: /dev/stdout
    defaultConfig:
      discoveryAddress: istiod.istio-system.svc:15012
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
  meshNetworks: 'networks: {}'
"""
OTHER_CONFIG_MAP = """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
data: {a: b}
"""


def _policy(resources: list, mesh_config: dict | None = None) -> str:
    doc = compile_snapshot(resources, RegistryView(), node_for("productpage"), mesh_config=mesh_config)
    return doc["mesh"]["outbound_traffic_policy"]


def test_the_default_is_allow_any() -> None:
    assert _policy([]) == "ALLOW_ANY"


def test_istios_config_map_sets_the_policy_and_other_config_maps_are_only_stored() -> None:
    warnings: list[Message] = []
    resources = load_resources(OTHER_CONFIG_MAP + "---" + ISTIO_CONFIG_MAP, warnings=warnings)
    assert [type(r) for r in resources] == [ConfigMap, ConfigMap] and warnings == []
    assert not resources[0].is_mesh_config and resources[1].is_mesh_config
    assert _policy(resources) == "REGISTRY_ONLY"
    # applied, it replaces the mesh config given at start (as Istio's ConfigMap is the mesh config)
    assert _policy(resources, {"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}) == "REGISTRY_ONLY"


def test_set_values_write_the_same_config_map() -> None:
    config = set_values(["meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY"])
    assert config == {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}
    resources = load_resources([mesh_config_map(config)])
    assert _policy(resources) == "REGISTRY_ONLY"


@pytest.mark.parametrize("bad", [
    "outboundTrafficPolicy.mode=REGISTRY_ONLY", "meshConfig.outboundTrafficPolicy.mode=DENY", "meshConfig",
])
def test_bad_set_values_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="--set"):
        set_values([bad])


def test_a_bad_mode_in_the_config_map_is_refused_with_its_field() -> None:
    text = ISTIO_CONFIG_MAP.replace("REGISTRY_ONLY", "BLOCK")
    with pytest.raises(ConfigError) as error:
        load_resources(text)
    message = str(error.value)
    assert "ConfigMap/istio-system/istio" in message
    assert "outboundTrafficPolicy.mode" in message and "BLOCK" in message


def test_gateway_topology_trusted_proxies_reach_the_snapshot_and_bad_values_are_named() -> None:
    config = set_values(["meshConfig.defaultConfig.gatewayTopology.numTrustedProxies=2"])
    resources = load_resources([mesh_config_map(config)])
    doc = compile_snapshot(resources, RegistryView(), node_for("productpage"))
    assert doc["mesh"]["num_trusted_proxies"] == 2
    text = ISTIO_CONFIG_MAP.replace("discoveryAddress: istiod.istio-system.svc:15012",
                                    "gatewayTopology: {numTrustedProxies: -1}")
    with pytest.raises(ConfigError) as error:
        load_resources(text)
    assert "ConfigMap/istio-system/istio" in str(error.value)
    assert "defaultConfig.gatewayTopology.numTrustedProxies" in str(error.value) and "-1" in str(error.value)


def _gateway() -> Node:
    return Node(instance="istio-ingressgateway-0", namespace="istio-system", workload="istio-ingressgateway",
                labels={"app": "istio-ingressgateway", "istio": "ingressgateway"}, kind="gateway")


def test_gateway_topology_proxy_protocol_as_istioctl_install_sets_it() -> None:
    """``istioctl install --set meshConfig.defaultConfig.gatewayTopology.proxyProtocol={}`` (the
    IstioOperator of Istio's "Ingress Gateway" authorization task, TCP proxy load balancer)."""
    config = set_values(["meshConfig.defaultConfig.gatewayTopology.proxyProtocol={}"])
    assert config == {"defaultConfig": {"gatewayTopology": {"proxyProtocol": {}}}}
    resources = load_resources([mesh_config_map(config)])
    assert compile_snapshot(resources, RegistryView(), _gateway())["mesh"]["proxy_protocol"] is True
    assert compile_snapshot([], RegistryView(), _gateway())["mesh"]["proxy_protocol"] is False
    for bad, named in (("proxyProtocol: true", "expected {}"), ("proxyProtocol: {version: 2}", "version")):
        text = ISTIO_CONFIG_MAP.replace("discoveryAddress: istiod.istio-system.svc:15012",
                                        f"gatewayTopology: {{{bad}}}")
        with pytest.raises(ConfigError) as error:
            load_resources(text)
        assert "defaultConfig.gatewayTopology.proxyProtocol" in str(error.value) and named in str(error.value)


INGRESS_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: istio-ingressgateway
  namespace: istio-system
spec:
  selector:
    matchLabels: {istio: ingressgateway}
  template:
    metadata:
      labels: {app: istio-ingressgateway, istio: ingressgateway}
      annotations:
        proxy.istio.io/config: '{"gatewayTopology" : { "numTrustedProxies": 2, "proxyProtocol": {} } }'
    spec:
      containers:
      - name: istio-proxy
        image: docker.io/istio/proxyv2:1.24.0
"""


def test_the_pod_annotation_overrides_the_mesh_default_for_that_proxy() -> None:
    """Istio's "Configuring Gateway Network Topology": ``proxy.istio.io/config`` on the ingress
    gateway's pod template, merged over ``defaultConfig`` as Istio's MergeProxyConfig (a top-level
    field such as ``gatewayTopology`` replaces the default's as a whole)."""
    resources = load_resources(INGRESS_DEPLOYMENT)
    assert analyze(resources) == []  # the ingress's own Deployment: no sample image needed
    mesh = compile_snapshot(resources, RegistryView(), _gateway())["mesh"]
    assert (mesh["num_trusted_proxies"], mesh["proxy_protocol"]) == (2, True)
    mesh_wide = {"defaultConfig": {"gatewayTopology": {"numTrustedProxies": 5}}}
    mesh = compile_snapshot(resources, RegistryView(), _gateway(), mesh_config=mesh_wide)["mesh"]
    assert mesh["num_trusted_proxies"] == 2  # the annotation wins for this proxy
    only_pp = load_resources(INGRESS_DEPLOYMENT.replace('"numTrustedProxies": 2, ', ""))
    mesh = compile_snapshot(only_pp, RegistryView(), _gateway(), mesh_config=mesh_wide)["mesh"]
    assert (mesh["num_trusted_proxies"], mesh["proxy_protocol"]) == (0, True)  # gatewayTopology replaced
    # other proxies keep the mesh-wide value
    assert compile_snapshot(resources, RegistryView(), node_for("productpage"),
                            mesh_config=mesh_wide)["mesh"]["num_trusted_proxies"] == 5


def test_a_bad_annotation_is_an_error_and_unknown_fields_are_warned() -> None:
    bad = load_resources(INGRESS_DEPLOYMENT.replace('{"gatewayTopology" : {', '{"gatewayTopology" : {{'))
    (error,) = [m for m in analyze(bad) if m.code == "MK0306"]
    assert error.severity.value == "Error"
    assert error.resource == "Deployment/istio-system/istio-ingressgateway"
    assert "proxy.istio.io/config" in error.field and "not valid JSON or YAML" in error.text
    negative = load_resources(INGRESS_DEPLOYMENT.replace('"numTrustedProxies": 2', '"numTrustedProxies": -1'))
    assert [m.code for m in analyze(negative)] == ["MK0306"]
    extra = load_resources(INGRESS_DEPLOYMENT.replace(
        '"proxyProtocol": {} }',
        '"proxyProtocol": {}, "forwardClientCertDetails": "SANITIZE" }, '
        '"holdApplicationUntilProxyStarts": true'))
    warned = analyze(extra)
    field = "spec.template.metadata.annotations[proxy.istio.io/config]"
    assert sorted((m.code, m.field) for m in warned) == [
        ("MK0307", f"{field}.gatewayTopology.forwardClientCertDetails"),
        ("MK0307", f"{field}.holdApplicationUntilProxyStarts")]
    assert all(m.severity.value == "Warning" for m in warned)
    # what it acts on still applies
    assert compile_snapshot(extra, RegistryView(), _gateway())["mesh"]["proxy_protocol"] is True


def test_any_workloads_annotation_is_read_for_its_own_proxy() -> None:
    """A sample workload's pod template may carry the annotation too: its fields are checked and
    reported, and reach only that workload's proxy (gatewayTopology acts on gateways alone)."""
    text = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: productpage-v1}
spec:
  selector: {matchLabels: {app: productpage, version: v1}}
  template:
    metadata:
      labels: {app: productpage, version: v1}
      annotations:
        proxy.istio.io/config: |
          holdApplicationUntilProxyStarts: true
          gatewayTopology:
            numTrustedProxies: 3
    spec:
      containers: [{name: productpage, image: docker.io/istio/examples-bookinfo-productpage-v1:1.20.2}]
"""
    resources = load_resources(text)
    warned = [(m.code, m.field.rsplit("]", 1)[1]) for m in analyze(resources)]
    assert warned == [("MK0307", ".holdApplicationUntilProxyStarts")]
    def hops(name: str) -> int:
        return compile_snapshot(resources, RegistryView(), node_for(name))["mesh"]["num_trusted_proxies"]

    assert (hops("productpage"), hops("reviews")) == (3, 0)


CONCURRENCY_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: productpage-v1}
spec:
  selector: {matchLabels: {app: productpage, version: v1}}
  template:
    metadata:
      labels: {app: productpage, version: v1}
      annotations:
        proxy.istio.io/config: '{"concurrency": VALUE}'
    spec:
      containers: [{name: productpage, image: docker.io/istio/examples-bookinfo-productpage-v1:1.20.2}]
"""


def test_concurrency_is_acted_on_per_workload() -> None:
    """``concurrency`` in a pod template's annotation: the local mesh runs that workload's sidecar
    with ``--concurrency N`` (no MK0307); a bad value is refused (MK0306); none means 1."""
    two = load_resources(CONCURRENCY_DEPLOYMENT.replace("VALUE", "2"))
    assert analyze(two) == []
    assert [plan.concurrency for plan in plan_workloads(two)] == [2]
    assert [spec.concurrency for spec in specs_of(two)] == [2]
    plain = load_resources(CONCURRENCY_DEPLOYMENT.replace(
        "      annotations:\n        proxy.istio.io/config: '{\"concurrency\": VALUE}'\n", ""))
    assert [plan.concurrency for plan in plan_workloads(plain)] == [1]
    for bad in ('"two"', "-1", "17", "true"):
        (error,) = analyze(load_resources(CONCURRENCY_DEPLOYMENT.replace("VALUE", bad)))
        assert error.code == "MK0306" and "concurrency: expected a whole number from 0" in error.text, bad


def test_concurrency_on_the_ingress_gateway_is_warned() -> None:
    """The local mesh's ingress gateway runs one process: concurrency there is said to have no effect."""
    ingress = load_resources(INGRESS_DEPLOYMENT.replace('"proxyProtocol": {} }',
                                                        '"proxyProtocol": {} }, "concurrency": 2'))
    (warned,) = analyze(ingress)
    assert (warned.code, warned.field.rsplit("]", 1)[1]) == ("MK0307", ".concurrency")
    assert "ingress gateway" in warned.text
