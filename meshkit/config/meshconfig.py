"""Istio's mesh config as Istio keeps it: the ``istio`` ConfigMap in ``istio-system``, key ``mesh`` (YAML).

``istioctl install --set meshConfig.X=Y`` writes that ConfigMap; ``kubectl apply`` of it changes
the mesh config. meshkit reads the same object: ``meshkit up --set meshConfig...`` applies it,
and ``meshkit apply -f`` of Istio's own ConfigMap does too (`is_mesh_config_map`). Any other
ConfigMap is stored as written: the local mesh reads it only as a volume a Deployment mounts
(`meshkit.config.volumes`, the ``nginx`` image's ``nginx.conf``). What the compiler takes from it
(`mesh_settings`, the snapshot's ``mesh`` section): ``outboundTrafficPolicy.mode`` (ALLOW_ANY |
REGISTRY_ONLY), ``pathNormalization``, ``defaultConfig.gatewayTopology.numTrustedProxies`` (the
proxies in front of a gateway whose ``X-Forwarded-For`` entries it trusts) and
``defaultConfig.gatewayTopology.proxyProtocol`` (a gateway's connections start with a PROXY
protocol header); the other meshConfig fields are accepted and have no effect on the local mesh.
A workload's ``proxy.istio.io/config`` annotation overrides ``defaultConfig`` for its proxy
(`merge_proxy_config`, `meshkit.config.proxyconfig`).

Pure data: no sockets, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml
from pydantic import model_validator

from meshkit.config.workloads import CoreResource

ROOT_NAMESPACE = "istio-system"
MESH_CONFIG_MAP = "istio"
MESH_KEY = "mesh"
OUTBOUND_POLICIES = ("ALLOW_ANY", "REGISTRY_ONLY")
DEFAULT_OUTBOUND_POLICY = "ALLOW_ANY"  # Istio's default (meshConfig.outboundTrafficPolicy.mode)
PATH_NORMALIZATIONS = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
DEFAULT_PATH_NORMALIZATION = "BASE"  # Istio's meshConfig.pathNormalization default (1.8+)


def is_mesh_config_map(document: Mapping[str, Any]) -> bool:
    """Is this document Istio's mesh config (ConfigMap ``istio`` in ``istio-system``)?"""
    meta = document.get("metadata")
    return (document.get("kind") == "ConfigMap" and isinstance(meta, dict)
            and meta.get("name") == MESH_CONFIG_MAP and meta.get("namespace") == ROOT_NAMESPACE)


def outbound_policy(mesh_config: Mapping[str, Any] | None) -> str:
    """``outboundTrafficPolicy.mode`` of a meshConfig (ALLOW_ANY when unset); ValueError when bad."""
    policy = (mesh_config or {}).get("outboundTrafficPolicy")
    if policy is None:
        return DEFAULT_OUTBOUND_POLICY
    if not isinstance(policy, dict):
        raise ValueError(f"outboundTrafficPolicy: expected an object with 'mode', got {policy!r}")
    mode = policy.get("mode", DEFAULT_OUTBOUND_POLICY)
    if mode not in OUTBOUND_POLICIES:
        raise ValueError(f"outboundTrafficPolicy.mode: {mode!r} is not one of {', '.join(OUTBOUND_POLICIES)}")
    return str(mode)


def mesh_settings(
    mesh_config: Mapping[str, Any] | None = None, proxy_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The snapshot's ``mesh`` section from Istio's ``meshConfig`` (its YAML shape), with a workload's
    own ProxyConfig (``proxy.istio.io/config``) merged over ``defaultConfig`` when given.

    ``pathNormalization.normalization``: NONE | BASE | MERGE_SLASHES | DECODE_AND_MERGE_SLASHES,
    Istio's default BASE (istio/api mesh/v1alpha1 ``MeshConfig.ProxyPathNormalization``, 1.8+).
    """
    config = mesh_config or {}
    normalization = (config.get("pathNormalization") or {}).get("normalization") or DEFAULT_PATH_NORMALIZATION
    if normalization not in PATH_NORMALIZATIONS:
        raise ValueError(
            f"meshConfig.pathNormalization.normalization: {normalization!r} is not one of "
            f"{', '.join(PATH_NORMALIZATIONS)}"
        )
    default = config.get("defaultConfig") or {}
    if not isinstance(default, dict):
        raise ValueError(f"defaultConfig: expected an object (ProxyConfig), got {default!r}")
    if proxy_config is not None:  # a pod's proxy.istio.io/config over the mesh-wide defaultConfig
        default = merge_proxy_config(default, proxy_config)
    return {"path_normalization": normalization, "outbound_traffic_policy": outbound_policy(config),
            "num_trusted_proxies": num_trusted_proxies(default, "defaultConfig."),
            "proxy_protocol": proxy_protocol(default, "defaultConfig.")}


def _topology(proxy_config: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    topology = proxy_config.get("gatewayTopology")
    if topology is None:
        return {}
    if not isinstance(topology, dict):
        raise ValueError(f"{where}gatewayTopology: expected an object, got {topology!r}")
    return topology


def num_trusted_proxies(proxy_config: Mapping[str, Any], where: str = "") -> int:
    """``gatewayTopology.numTrustedProxies`` of a ProxyConfig (0 when unset): a gateway takes the
    client's address (``remote.ip``) from that many trusted hops of ``X-Forwarded-For``, as Envoy's
    ``xff_num_trusted_hops`` with ``use_remote_address`` on. ValueError when bad."""
    value = _topology(proxy_config, where).get("numTrustedProxies", 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 64:
        raise ValueError(f"{where}gatewayTopology.numTrustedProxies: expected a whole number "
                         f"from 0 to 64, got {value!r}")
    return value


MAX_CONCURRENCY = 16


def concurrency(proxy_config: Mapping[str, Any], where: str = "") -> int:
    """``concurrency`` of a ProxyConfig: the sidecar's worker processes (``--concurrency N``, as
    Envoy's worker threads); 1 when unset on the local mesh, 0 = one per CPU (as Istio). ValueError
    when not a whole number from 0 to ``MAX_CONCURRENCY``."""
    value = proxy_config.get("concurrency", 1)
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_CONCURRENCY:
        raise ValueError(f"{where}concurrency: expected a whole number from 0 (one per CPU) to "
                         f"{MAX_CONCURRENCY}, got {value!r}")
    return value


def proxy_protocol(proxy_config: Mapping[str, Any], where: str = "") -> bool:
    """``gatewayTopology.proxyProtocol`` of a ProxyConfig: present (``{}``, Istio's empty
    ``ProxyProtocolConfiguration`` message) puts Envoy's proxy_protocol listener filter on a
    gateway's listeners; absent or null leaves it off. ValueError when not an empty object."""
    value = _topology(proxy_config, where).get("proxyProtocol")
    if value is None:
        return False
    if not isinstance(value, dict):
        raise ValueError(f"{where}gatewayTopology.proxyProtocol: expected {{}} (an empty object), "
                         f"got {value!r}")
    if value:
        raise ValueError(f"{where}gatewayTopology.proxyProtocol: unknown field(s) "
                         f"{', '.join(map(str, value))} (Istio's ProxyProtocolConfiguration has none)")
    return True


def merge_proxy_config(default: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A pod's ProxyConfig over the mesh's ``defaultConfig``, as Istio's ``MergeProxyConfig``: the
    annotation is unmarshalled onto the default, so each top-level field it sets replaces the
    default's (a message such as ``gatewayTopology`` as a whole); ``proxyMetadata`` maps merge."""
    merged = {**default, **override}
    if isinstance(default.get("proxyMetadata"), dict) and isinstance(override.get("proxyMetadata"), dict):
        merged["proxyMetadata"] = {**default["proxyMetadata"], **override["proxyMetadata"]}
    return merged


def parse_mesh(text: str) -> dict[str, Any]:
    """The ``mesh`` key's YAML -> meshConfig dict (ValueError naming what is wrong)."""
    try:
        value = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ValueError(f"data.mesh: not valid YAML: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"data.mesh: expected a YAML mapping (meshConfig), got {type(value).__name__}")
    try:
        mesh_settings(value)  # what the compiler reads from it must be valid
    except ValueError as exc:
        raise ValueError(f"data.mesh: {exc}") from None
    return value


def set_values(assignments: Sequence[str]) -> dict[str, Any]:
    """``istioctl install --set`` values under ``meshConfig.`` -> a meshConfig dict.

    ``["meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY"]`` -> ``{"outboundTrafficPolicy":
    {"mode": "REGISTRY_ONLY"}}``. ValueError for anything that is not ``meshConfig.PATH=VALUE``.
    """
    config: dict[str, Any] = {}
    for item in assignments:
        path, sep, raw = item.partition("=")
        parts = path.strip().split(".")
        if not sep or len(parts) < 2 or parts[0] != "meshConfig" or not all(parts[1:]):
            raise ValueError(f"--set {item!r}: expected meshConfig.FIELD=VALUE "
                             "(e.g. meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY)")
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
        node = config
        for part in parts[1:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {item!r}: {part} is already a value")
            node = child
        node[parts[-1]] = value
    try:
        outbound_policy(config)
    except ValueError as exc:
        raise ValueError(f"--set meshConfig.{exc}") from None
    return config


def mesh_config_map(mesh_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``istio`` ConfigMap document holding ``mesh_config`` (what istioctl install writes)."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": MESH_CONFIG_MAP, "namespace": ROOT_NAMESPACE},
        "data": {MESH_KEY: yaml.safe_dump(dict(mesh_config), sort_keys=True)},
    }


class ConfigMap(CoreResource):
    """A ConfigMap: Istio's mesh config (``istio-system/istio``), or files a Deployment mounts."""

    kind: Literal["ConfigMap"] = "ConfigMap"
    data: dict[str, str] | None = None
    binary_data: dict[str, str] | None = None
    immutable: bool | None = None
    spec: None = None

    @model_validator(mode="after")
    def _mesh_is_mesh_config(self) -> ConfigMap:
        if self.is_mesh_config and MESH_KEY in (self.data or {}):
            parse_mesh((self.data or {})[MESH_KEY])
        return self

    @property
    def is_mesh_config(self) -> bool:
        return (self.metadata.name, self.metadata.namespace) == (MESH_CONFIG_MAP, ROOT_NAMESPACE)

    @property
    def mesh_config(self) -> dict[str, Any]:
        return parse_mesh((self.data or {}).get(MESH_KEY, ""))


def mesh_config_of(
    resources: Sequence[Any], base: Mapping[str, Any] | None = None
) -> Mapping[str, Any] | None:
    """The meshConfig in effect: Istio's ConfigMap when one is applied (it replaces the whole mesh
    config, as on Istio), else ``base``."""
    for resource in resources:
        if isinstance(resource, ConfigMap) and resource.is_mesh_config:
            return resource.mesh_config
    return base
