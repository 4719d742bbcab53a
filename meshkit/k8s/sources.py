"""Kubernetes objects (plain dicts from the API) -> what the control plane keeps: pure functions.

* `istio_resource`: a VirtualService/DestinationRule/PeerAuthentication/AuthorizationPolicy/
  RequestAuthentication object -> a typed `Resource` (server-set metadata and kubectl's
  last-applied annotation dropped), or the loader's messages naming the resource and field.
* `desired_registry`: Services + EndpointSlices + Pods -> the services and endpoints the
  registry must hold, the way local mode registers them:

  - a Service (not ExternalName, with a port) is a registry service; its port is the first
    port named ``http``/``http-*`` (or with an http appProtocol), else the first port
    (meshkit services have one port);
  - each endpoint of its EndpointSlices that targets a known Pod is an endpoint: the pod's
    name is the instance, the pod IP and the slice's port for that service port are the
    address (captured by the destination's iptables rules and handed to its sidecar's
    inbound listener), which is also the app port behind that sidecar; labels (app, version,
    ...) and the service account come from the pod, the workload from its owner (a
    ReplicaSet's Deployment), ``has_sidecar`` from a ``meshkit-proxy`` container, and
    ``healthy`` from the endpoint's ``ready`` condition. Labels naming one pod or one
    controller revision (``pod-template-hash``, ...) are left out, so replicas share a shape;
  - an endpoint with no Pod behind it (a Service with hand-made endpoints, the API server's
    ``kubernetes`` service) is an endpoint without sidecar named ``<service>-<address>``;
  - an endpoint whose Pod is not known yet is left out until the Pod arrives;
  - a Pod with a sidecar that no Service selects (a client such as ``kubectl run``) is a
    *workload*: its node (labels, service account, workload, first container port as the app
    port) without a service, so its sidecar still gets its identity and ``sourceLabels`` match.

Nothing here talks to a cluster or to the control plane.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshkit.config.api_kinds import config_kinds
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError, Message
from meshkit.config.registry import Endpoint, Node, Service
from meshkit.config.resources import Resource
from meshkit.control.registry import RegisteredEndpoint
from meshkit.k8s.api import ResourceType
from meshkit.k8s.names import SIDECAR_CONTAINER

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# bookkeeping of tools, not config: kopf's progress and diff-base (meshkit.k8s.operator writes them
# under operator.meshkit.dev/; kopf's default prefix is kopf.zalando.org/). Kept, every status
# handling by the operator would make a new config revision and a push to every sidecar.
BOOKKEEPING_PREFIXES = ("operator.meshkit.dev/", "kopf.zalando.org/")
# labels that differ between replicas or revisions of one workload
PER_POD_LABELS = frozenset({"pod-template-hash", "controller-revision-hash",
                            "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index"})

# every Istio and Gateway API kind meshkit implements, from the list the RBAC rules come from
# (meshkit.config.api_kinds)
ISTIO_TYPES: tuple[ResourceType, ...] = tuple(
    ResourceType(kind.group, kind.version, kind.plural, kind.kind) for kind in config_kinds()
)
# the kind part of the config store's keys per type: Gateway API's Gateway is
# ``Gateway.gateway.networking.k8s.io``, Istio's ``Gateway`` (meshkit.config.api_kinds.ApiKind.store_kind)
STORE_KINDS: dict[ResourceType, str] = {
    ResourceType(kind.group, kind.version, kind.plural, kind.kind): kind.store_kind for kind in config_kinds()
}
SERVICES = ResourceType("", "v1", "services", "Service")
ENDPOINT_SLICES = ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
PODS = ResourceType("", "v1", "pods", "Pod")
REGISTRY_TYPES: tuple[ResourceType, ...] = (SERVICES, ENDPOINT_SLICES, PODS)

ObjectKey = tuple[str, str]  # (namespace, name)


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


# -- Istio config ----------------------------------------------------------------------------------


def istio_resource(obj: Mapping[str, Any],
                   resource_type: ResourceType) -> tuple[Resource | None, list[Message]]:
    """The typed resource of an Istio object, or None and the loader's messages."""
    metadata = obj.get("metadata") or {}
    kept: dict[str, Any] = {key: metadata[key] for key in ("name", "namespace", "labels")
                            if metadata.get(key) is not None}
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items()
                   if k != LAST_APPLIED and not k.startswith(BOOKKEEPING_PREFIXES)}
    if annotations:
        kept["annotations"] = annotations
    document: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion") or f"{resource_type.group}/{resource_type.version}",
        "kind": obj.get("kind") or resource_type.kind,
        "metadata": kept,
    }
    if "spec" in obj:
        document["spec"] = obj["spec"]
    try:
        return load_resources(document, origin=f"kubernetes {resource_type}")[0], []
    except ConfigError as error:
        return None, list(error.messages)


# -- the registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DesiredRegistry:
    """What the registry must hold, and what was left out (one line each, for the log)."""

    services: dict[ObjectKey, Service] = field(default_factory=dict)
    endpoints: dict[ObjectKey, RegisteredEndpoint] = field(default_factory=dict)
    workloads: list[Node] = field(default_factory=list)  # sidecars of pods in no service
    left_out: list[str] = field(default_factory=list)


def service_port(service: Mapping[str, Any]) -> tuple[int, str] | None:
    """(port, name) of the Service's HTTP port (see the module doc), or None (no port, ExternalName)."""
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return None
    ports = [p for p in spec.get("ports") or [] if isinstance(p.get("port"), int)
             and p.get("protocol", "TCP") == "TCP"]
    if not ports:
        return None

    def http(port: Mapping[str, Any]) -> bool:
        name = str(port.get("name") or "")
        app_protocol = str(port.get("appProtocol") or "")
        return name == "http" or name.startswith("http-") or app_protocol in ("http", "kubernetes.io/h2c")

    chosen = next((p for p in ports if http(p)), ports[0])
    return int(chosen["port"]), str(chosen.get("name") or "")


def workload_name(pod: Mapping[str, Any]) -> str:
    """Istio's workload name: a ReplicaSet's pod belongs to its Deployment, other owners name it."""
    metadata = pod.get("metadata") or {}
    owners = [o for o in metadata.get("ownerReferences") or [] if o.get("controller", True)]
    if not owners:
        return str(metadata.get("name") or "")
    owner = owners[0]
    name = str(owner.get("name") or metadata.get("name") or "")
    if owner.get("kind") == "ReplicaSet":
        template_hash = (metadata.get("labels") or {}).get("pod-template-hash")
        if template_hash and name.endswith(f"-{template_hash}"):
            return name[: -len(template_hash) - 1]
        return re.sub(r"-[a-z0-9]{5,10}$", "", name)
    return name


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    """A ``meshkit-proxy`` container, or a native sidecar (an init container that keeps running)."""
    spec = pod.get("spec") or {}
    return any(c.get("name") == SIDECAR_CONTAINER for c in spec.get("containers") or []) or any(
        c.get("name") == SIDECAR_CONTAINER and c.get("restartPolicy") == "Always"
        for c in spec.get("initContainers") or [])


def _slice_port(endpoint_slice: Mapping[str, Any], port_name: str) -> int | None:
    ports = [p for p in endpoint_slice.get("ports") or [] if isinstance(p.get("port"), int)]
    for port in ports:
        if str(port.get("name") or "") == port_name:
            return int(port["port"])
    return int(ports[0]["port"]) if len(ports) == 1 else None


def desired_registry(services: Iterable[Mapping[str, Any]], endpoint_slices: Iterable[Mapping[str, Any]],
                     pods: Mapping[ObjectKey, Mapping[str, Any]],
                     ignored_namespaces: frozenset[str] = frozenset()) -> DesiredRegistry:
    """The services and endpoints the registry must hold (see the module doc)."""
    desired = DesiredRegistry()
    ports: dict[ObjectKey, tuple[int, str]] = {}
    for obj in services:
        namespace, name = object_key(obj)
        if namespace in ignored_namespaces:
            continue
        port = service_port(obj)
        if port is None:
            desired.left_out.append(f"Service/{namespace}/{name}: no TCP port (or ExternalName)")
            continue
        ports[(namespace, name)] = port
        desired.services[(namespace, name)] = Service(name=name, namespace=namespace, port=port[0])
    for endpoint_slice in sorted(endpoint_slices, key=object_key):
        namespace, slice_name = object_key(endpoint_slice)
        service = ((endpoint_slice.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not isinstance(service, str) or (namespace, service) not in ports \
                or endpoint_slice.get("addressType") == "FQDN":
            continue
        slice_port = _slice_port(endpoint_slice, ports[(namespace, service)][1])
        if slice_port is None:
            desired.left_out.append(f"EndpointSlice/{namespace}/{slice_name}: no port for service "
                                    f"{service}'s port {ports[(namespace, service)][1] or '(unnamed)'}")
            continue
        for entry in endpoint_slice.get("endpoints") or []:
            registered = _endpoint(entry, (namespace, str(service), slice_port), pods, desired.left_out)
            if registered is None:
                continue
            key = (registered.endpoint.namespace, registered.endpoint.instance)
            kept = desired.endpoints.get(key)
            if kept is not None and kept.endpoint.service != service:
                desired.left_out.append(f"Pod/{key[0]}/{key[1]}: also in service {service}; meshkit keeps "
                                        f"one service per instance ({kept.endpoint.service})")
                continue
            desired.endpoints[key] = registered
    for key, pod in sorted(pods.items()):
        if key[0] not in ignored_namespaces and key not in desired.endpoints and has_sidecar(pod):
            desired.workloads.append(_serviceless_node(key, pod))
    return desired


def pod_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return {k: str(v) for k, v in labels.items() if k not in PER_POD_LABELS}


def _serviceless_node(key: ObjectKey, pod: Mapping[str, Any]) -> Node:
    spec = pod.get("spec") or {}
    ports = [int(port["containerPort"]) for container in spec.get("containers") or []
             if container.get("name") != SIDECAR_CONTAINER
             for port in container.get("ports") or [] if isinstance(port.get("containerPort"), int)]
    return Node(instance=key[1], namespace=key[0], workload=workload_name(pod), labels=pod_labels(pod),
                service_account=str(spec.get("serviceAccountName") or "default"),
                app_port=ports[0] if ports else None)


def _endpoint(entry: Mapping[str, Any], where: tuple[str, str, int],
              pods: Mapping[ObjectKey, Mapping[str, Any]], left_out: list[str]) -> RegisteredEndpoint | None:
    """One slice entry of service ``where`` = (namespace, service, port) as an endpoint, or None."""
    namespace, service, port = where
    addresses = entry.get("addresses") or []
    if not addresses:
        return None
    address = str(addresses[0])
    ready = (entry.get("conditions") or {}).get("ready")
    healthy = ready is None or bool(ready)  # the API says: unset means ready
    target = entry.get("targetRef") or {}
    if target.get("kind") != "Pod":
        instance = f"{service}-{re.sub(r'[^a-z0-9]+', '-', address.lower()).strip('-')}"
        return RegisteredEndpoint(Endpoint(instance=instance, workload=service, service=service,
                                           namespace=namespace, address=address, port=port,
                                           has_sidecar=False, healthy=healthy))
    pod_key = (str(target.get("namespace") or namespace), str(target.get("name") or ""))
    pod = pods.get(pod_key)
    if pod is None:
        left_out.append(f"Pod/{pod_key[0]}/{pod_key[1]}: in service {service} but not seen yet")
        return None
    endpoint = Endpoint(
        instance=pod_key[1], workload=workload_name(pod), service=service, namespace=pod_key[0],
        address=address, port=port, labels=pod_labels(pod),
        service_account=str((pod.get("spec") or {}).get("serviceAccountName") or "default"),
        has_sidecar=has_sidecar(pod), healthy=healthy,
    )
    return RegisteredEndpoint(endpoint, app_port=port)
