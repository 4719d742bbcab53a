"""Istio's mesh config ConfigMap and ``--set meshConfig...``: what the compiler takes from them."""

from __future__ import annotations

import pytest

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.meshconfig import ConfigMap, mesh_config_map, set_values
from meshkit.config.messages import ConfigError, Message
from meshkit.config.registry import RegistryView
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


def test_istios_config_map_sets_the_policy_and_other_config_maps_are_ignored() -> None:
    warnings: list[Message] = []
    resources = load_resources(ISTIO_CONFIG_MAP + "---" + OTHER_CONFIG_MAP, warnings=warnings)
    assert [type(r) for r in resources] == [ConfigMap]
    assert [(w.code, w.resource) for w in warnings] == [("MK0009", "ConfigMap/default/settings")]
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
