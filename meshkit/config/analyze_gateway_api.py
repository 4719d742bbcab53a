"""Analyzer checks of the Gateway API kinds (HTTPRoute, TLSRoute, GatewayClass): codes MK0410-MK0414.

Called by `meshkit.config.analyze.analyze` over the whole config set. Every finding here is a
warning or a note, never an error: as on a cluster, a route with a dangling reference is stored and
its ``status`` says what is wrong (`meshkit.config.httproutes.route_status`). Fault injection has
no Gateway API form; a filter that tries one is refused by the loader
(`meshkit.config.gateway_api.HTTPRouteFilter`).
"""

from __future__ import annotations

from collections.abc import Sequence

from meshkit.config import codes
from meshkit.config.gateway_api import ISTIO_CONTROLLER, GatewayClass, HTTPRoute, KubeGateway, KubeTLSRoute
from meshkit.config.hosts import resolve_host
from meshkit.config.httproutes import (
    GATEWAY_CLASS,
    gateway_of,
    https_listeners,
    listener_secret,
    missing_backends,
    service_entry_of,
    service_exists,
)
from meshkit.config.messages import Message, Severity
from meshkit.config.registry import RegistryView
from meshkit.config.resources import Resource, VirtualService
from meshkit.config.secrets import find_secret


def check_gateway_api(resources: Sequence[Resource], registry: RegistryView | None) -> list[Message]:
    """Every MK041x finding about ``resources`` (the registry: Services not in the config)."""
    view = registry if registry is not None else RegistryView()
    messages: list[Message] = []
    vs_hosts: dict[str, VirtualService] = {}
    for vs in sorted((r for r in resources if isinstance(r, VirtualService)), key=lambda v: v.key):
        if vs.spec.gateways and "mesh" not in vs.spec.gateways:
            continue
        for host in vs.spec.hosts:
            vs_hosts.setdefault(resolve_host(host, vs.metadata.namespace).host, vs)
    for route in (r for r in resources if isinstance(r, HTTPRoute | KubeTLSRoute)):
        namespace = route.metadata.namespace
        for index, parent in enumerate(route.spec.parent_refs):
            ns = parent.namespace or namespace
            at = f"spec.parentRefs[{index}]"
            if parent.is_service_entry:
                if service_entry_of(parent, namespace, resources) is None:
                    messages.append(Message(
                        codes.MK0410, Severity.WARNING, route.ref, f"{at}.name",
                        f"ServiceEntry {ns}/{parent.name} does not exist: this route attaches to nothing"))
                continue
            if not parent.is_service:
                gateway = gateway_of(parent, namespace, resources)
                if gateway is None:
                    messages.append(Message(
                        codes.MK0410, Severity.WARNING, route.ref, f"{at}.name",
                        f"{parent.kind or 'Gateway'} {ns}/{parent.name} does not exist (Gateway API's "
                        "Gateway, gateway.networking.k8s.io): this route attaches to nothing"))
                elif gateway.spec.gateway_class_name != GATEWAY_CLASS:
                    messages.append(Message(
                        codes.MK0412, Severity.WARNING, route.ref, at,
                        f"Gateway {ns}/{parent.name} has gatewayClassName "
                        f"{gateway.spec.gateway_class_name}: only class {GATEWAY_CLASS} is served (by the "
                        "mesh's ingress gateway)"))
                continue
            if not isinstance(route, HTTPRoute):
                continue  # a TLSRoute on a Service: accepted, no VirtualService overlap to report
            if not service_exists(parent.name, ns, resources, view):
                messages.append(Message(
                    codes.MK0410, Severity.WARNING, route.ref, f"{at}.name",
                    f"Service {ns}/{parent.name} does not exist: this route attaches to nothing"))
                continue
            host = f"{parent.name}.{ns}.svc.cluster.local"
            if host in vs_hosts:
                messages.append(Message(
                    codes.MK0413, Severity.INFO, route.ref, at,
                    f"{vs_hosts[host].ref} also targets {host}: this HTTPRoute's rules apply to it, "
                    "the VirtualService's do not"))
        for field, name in missing_backends(route, resources, view):
            messages.append(Message(
                codes.MK0411, Severity.WARNING, route.ref, field,
                (f"no ServiceEntry declares {name.removeprefix('Hostname/')}" if name.startswith("Hostname/")
                 else f"Service {name} does not exist") + ": requests routed to it get 503 "
                "(status: ResolvedRefs False, BackendNotFound)"))
    for gateway, index, listener in https_listeners(resources):
        namespace, name = listener_secret(gateway, listener)
        if find_secret(resources, name, [namespace]) is None:
            at = f"spec.listeners[{index}].tls.certificateRefs[0]"
            messages.append(Message(
                codes.MK0415, Severity.WARNING, gateway.ref, at,
                f"Secret {namespace}/{name} does not exist: this HTTPS listener is not served until it does "
                f"(kubectl create -n {namespace} secret tls {name} --key=KEY --cert=CERT --dry-run=client "
                "-o yaml | meshkit apply -f -)"))
    for gateway in (r for r in resources if isinstance(r, KubeGateway)):
        if gateway.spec.gateway_class_name != GATEWAY_CLASS:
            messages.append(Message(
                codes.MK0412, Severity.WARNING, gateway.ref, "spec.gatewayClassName",
                f"class {gateway.spec.gateway_class_name}: only {GATEWAY_CLASS} is served (by the mesh's "
                "ingress gateway)"))
    for gateway_class in (r for r in resources if isinstance(r, GatewayClass)):
        if gateway_class.spec.controller_name != ISTIO_CONTROLLER:
            messages.append(Message(
                codes.MK0414, Severity.WARNING, gateway_class.ref, "spec.controllerName",
                f"{gateway_class.spec.controller_name} is not {ISTIO_CONTROLLER}: no controller of this "
                "mesh handles this class"))
    return messages
