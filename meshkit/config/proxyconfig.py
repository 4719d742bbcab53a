"""A workload's own ProxyConfig: Istio's ``proxy.istio.io/config`` pod annotation.

Istio reads this annotation of a pod template (JSON or YAML, a ``ProxyConfig``) and merges it over
the mesh config's ``defaultConfig`` for that pod's proxy (`meshconfig.merge_proxy_config`, as
Istio's ``MergeProxyConfig``). Istio's "Configuring Gateway Network Topology" page sets a
gateway's ``gatewayTopology`` this way, on the ingress gateway's Deployment in ``istio-system``.

What the local mesh acts on: ``gatewayTopology.numTrustedProxies`` and
``gatewayTopology.proxyProtocol`` (gateways only, as Istio), and ``concurrency`` (a sidecar's worker
processes, ``python -m meshkit.proxy --concurrency N``: `workload_concurrency`). Every other
ProxyConfig field is accepted and reported (MK0307, a warning naming the resource and the field: it
has no effect here), never silently dropped. An annotation that is not a YAML/JSON object, or a bad value of a
field acted on, is an Error (MK0306): the apply is refused and nothing changes.

The ingress gateway's Deployment (``istio-ingressgateway`` in ``istio-system``, pods labelled
``istio: ingressgateway``) is the one Deployment whose image need not be a sample image: its pods
are the gateway proxy the local mesh already runs, so it only carries this annotation
(`is_mesh_ingress_deployment`).

Pure data: no sockets, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from meshkit.config import codes
from meshkit.config.meshconfig import ROOT_NAMESPACE, concurrency, num_trusted_proxies, proxy_protocol
from meshkit.config.messages import Message, Severity
from meshkit.config.resources import Resource
from meshkit.config.workloads import Deployment

PROXY_CONFIG_ANNOTATION = "proxy.istio.io/config"
FIELD = f"spec.template.metadata.annotations[{PROXY_CONFIG_ANNOTATION}]"
# ProxyConfig fields the local mesh acts on, and their sub-fields
ACTED_ON: dict[str, tuple[str, ...]] = {
    "gatewayTopology": ("numTrustedProxies", "proxyProtocol"), "concurrency": (),
}
INGRESS_DEPLOYMENT = "istio-ingressgateway"
INGRESS_POD_LABELS = {"istio": "ingressgateway"}


def ingress_deployment() -> dict[str, Any]:
    """The ingress gateway's Deployment as ``istioctl install`` leaves it (trimmed to what the local
    mesh reads), for ``meshkit patch deployment istio-ingressgateway -n istio-system`` before any was
    applied: the patch goes on top of it, as ``kubectl patch`` on the installed gateway."""
    labels = {"app": INGRESS_DEPLOYMENT, **INGRESS_POD_LABELS}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": INGRESS_DEPLOYMENT, "namespace": ROOT_NAMESPACE, "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "istio-proxy", "image": "docker.io/istio/proxyv2"}]},
            },
        },
    }


def parse_proxy_config(text: str) -> dict[str, Any]:
    """The annotation's text -> a ProxyConfig dict; ValueError saying what is wrong."""
    try:
        value = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid JSON or YAML: {' '.join(str(exc).split())}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a ProxyConfig object, got {type(value).__name__} {value!r}")
    num_trusted_proxies(value)
    proxy_protocol(value)
    concurrency(value)
    return value


def unsupported_fields(proxy_config: Mapping[str, Any]) -> list[str]:
    """The fields the local mesh does not act on (``gatewayTopology.forwardClientCertDetails``,
    ``holdApplicationUntilProxyStarts``...), as dotted paths."""
    found = []
    for key, value in proxy_config.items():
        acted = ACTED_ON.get(str(key))
        if acted is None:
            found.append(str(key))
        elif isinstance(value, dict):
            found += [f"{key}.{sub}" for sub in value if sub not in acted]
    return found


def annotation_of(deployment: Deployment) -> str | None:
    return (deployment.spec.template.metadata.annotations or {}).get(PROXY_CONFIG_ANNOTATION)


def is_mesh_ingress_deployment(deployment: Deployment) -> bool:
    """The ingress gateway's own Deployment (what ``istioctl install`` creates): the local mesh runs
    its proxy already, so the Deployment only carries pod-template settings such as the annotation."""
    labels = deployment.pod_labels
    return (deployment.metadata.namespace == ROOT_NAMESPACE
            and all(labels.get(k) == v for k, v in INGRESS_POD_LABELS.items()))


def check_proxy_config(deployment: Deployment) -> list[Message]:
    """MK0306 (Error) for an annotation that cannot be a ProxyConfig; MK0307 (Warning) per field
    the local mesh does not act on."""
    text = annotation_of(deployment)
    if text is None:
        return []
    try:
        config = parse_proxy_config(text)
    except ValueError as exc:
        return [Message(codes.MK0306, Severity.ERROR, deployment.ref, FIELD,
                        f"{PROXY_CONFIG_ANNOTATION}: {exc}; nothing was applied")]
    found = [Message(codes.MK0307, Severity.WARNING, deployment.ref, f"{FIELD}.{name}",
                     f"ProxyConfig field {name} is accepted and has no effect on the local mesh (it acts on "
                     f"gatewayTopology.numTrustedProxies, gatewayTopology.proxyProtocol and concurrency)")
             for name in unsupported_fields(config)]
    if "concurrency" in config and is_mesh_ingress_deployment(deployment):
        found.append(Message(codes.MK0307, Severity.WARNING, deployment.ref, f"{FIELD}.concurrency",
                             "ProxyConfig field concurrency has no effect on the local mesh's ingress "
                             "gateway (it runs one process); on a workload's pod template it sets its "
                             "sidecar's worker processes"))
    return found


def proxy_config_for(
    resources: Sequence[Resource], workload: str | None, namespace: str
) -> dict[str, Any] | None:
    """The ProxyConfig annotation of the Deployment a proxy belongs to (by the node's workload name and
    namespace); None when it has none. A stored annotation was checked at apply (`check_proxy_config`)."""
    if workload is None:
        return None
    for resource in resources:
        if (isinstance(resource, Deployment) and resource.metadata.name == workload
                and resource.metadata.namespace == namespace):
            text = annotation_of(resource)
            if text is None:
                return None
            try:
                return parse_proxy_config(text)
            except ValueError:
                return None
    return None


def workload_concurrency(deployment: Deployment) -> int:
    """The sidecar worker processes the annotation asks for (1 without one, or with a bad one, which
    `check_proxy_config` refused at apply); 0 = one per CPU, resolved by the sidecar."""
    text = annotation_of(deployment)
    if text is None:
        return 1
    try:
        return concurrency(parse_proxy_config(text))
    except ValueError:
        return 1
