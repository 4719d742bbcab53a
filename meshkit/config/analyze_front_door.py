"""Analyzer checks for the front door of Istio's docs: Kubernetes workload objects and Gateways.

Called by `meshkit.config.analyze.analyze` over the whole config set (current plus incoming),
so an Error here rejects an apply atomically, naming the resource and the field. Codes
(docs/config-reference.md):

MK0301 E a Deployment's image is not one of Istio's sample images (the message lists them)
MK0302 E a Deployment's pod template labels do not carry its ``spec.selector.matchLabels``
MK0303 E a Service with no selector, or whose selector selects no pod of its namespace
MK0304 W a Deployment names a ServiceAccount that is not defined (only ``default`` always exists)
MK0305 W a Deployment with more than one container: the local mesh runs the first one
MK0306 E a pod template's ``proxy.istio.io/config`` annotation is not a ProxyConfig (`proxyconfig`)
MK0307 W a ``proxy.istio.io/config`` field the local mesh does not act on
MK0401 W a VirtualService names a gateway that does not exist (it does nothing for that gateway)
MK0402 W a Gateway selects no gateway proxy of the mesh (``istio: ingressgateway``; ``istio: egressgateway``
      once deployed)
MK0403 E an HTTPS Gateway server without ``tls.mode: SIMPLE`` and a ``credentialName``
MK0404 E a ``credentialName`` that names no TLS Secret (istio-system, or the Gateway's namespace)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from meshkit.config import codes
from meshkit.config.gateways import Gateway, credential_namespaces, https_servers, missing_gateways
from meshkit.config.ip_ranges import check_annotations
from meshkit.config.messages import Message, Severity
from meshkit.config.proxyconfig import check_proxy_config, is_mesh_ingress_deployment
from meshkit.config.registry import RegistryView
from meshkit.config.registry import Service as RegistryService
from meshkit.config.resources import Resource, VirtualService
from meshkit.config.secrets import find_secret
from meshkit.config.user_volumes import check_user_volumes
from meshkit.config.workloads import Deployment, Service, ServiceAccount, known_images, sample_app, selects

# The labels of the gateway proxies the local mesh runs (Istio's default ingress gateway's).
MESH_GATEWAY_LABELS = ({"app": "istio-ingressgateway", "istio": "ingressgateway"},)
# the egress gateway, when deployed (`meshkit deploy egressgateway`: meshkit.runtime.egressgw registers it)
EGRESS_GATEWAY_LABELS = {"app": "istio-egressgateway", "istio": "egressgateway"}
EGRESS_GATEWAY_SERVICE = ("istio-egressgateway", "istio-system")


def with_config_services(registry: RegistryView | None, resources: Sequence[Resource]) -> RegistryView | None:
    """The registry plus the Services of the config itself (applied with their rules in one input, a
    Service is known before the runtime registers it)."""
    if registry is None:
        return None
    known = {(s.name, s.namespace) for s in registry.services}
    extra = tuple(RegistryService(r.metadata.name, r.metadata.namespace, r.spec.ports[0].port)
                  for r in resources if isinstance(r, Service)
                  and (r.metadata.name, r.metadata.namespace) not in known)
    return dataclasses.replace(registry, services=registry.services + extra) if extra else registry


def check_front_door(resources: Sequence[Resource], registry: RegistryView | None) -> list[Message]:
    """Every MK03xx/MK04xx finding about ``resources``."""
    messages: list[Message] = []
    deployments = [r for r in resources if isinstance(r, Deployment)]
    accounts = {(r.metadata.namespace, r.metadata.name) for r in resources if isinstance(r, ServiceAccount)}
    for deployment in deployments:
        messages.extend(_check_deployment(deployment, accounts))
    for service in (r for r in resources if isinstance(r, Service)):
        messages.extend(_check_service(service, deployments, registry))
    for vs in (r for r in resources if isinstance(r, VirtualService)):
        for index, reference in missing_gateways(vs, resources):
            messages.append(Message(
                codes.MK0401, Severity.WARNING, vs.ref, f"spec.gateways[{index}]",
                f'gateway "{reference}" does not exist: this VirtualService does nothing for it '
                "(apply the Gateway, e.g. samples/bookinfo/networking/bookinfo-gateway.yaml)"))
    egress_running = registry is not None and registry.service(*EGRESS_GATEWAY_SERVICE) is not None
    proxies = MESH_GATEWAY_LABELS + ((EGRESS_GATEWAY_LABELS,) if egress_running else ())
    for gateway in (r for r in resources if isinstance(r, Gateway)):
        if not any(selects(gateway.spec.selector, labels) or not gateway.spec.selector for labels in proxies):
            egress = selects(gateway.spec.selector, EGRESS_GATEWAY_LABELS)
            messages.append(Message(
                codes.MK0402, Severity.WARNING, gateway.ref, "spec.selector",
                "selects the egress gateway, which is not running: start it with `meshkit deploy "
                "egressgateway`" if egress else
                "selects no gateway proxy of this mesh (its ingress gateway has the labels "
                "istio=ingressgateway, app=istio-ingressgateway), so nothing serves it"))
        messages.extend(_check_https_servers(gateway, resources))
    return messages


def _check_https_servers(gateway: Gateway, resources: Sequence[Resource]) -> list[Message]:
    """MK0403/MK0404: an HTTPS server needs ``tls.mode: SIMPLE`` with a Secret that exists."""
    found: list[Message] = []
    for index, server in https_servers(gateway):
        where = f"spec.servers[{index}].tls"
        credential = server.tls.credential_name if server.tls is not None else None
        if not credential:
            found.append(Message(codes.MK0403, Severity.ERROR, gateway.ref, where,
                                 "an HTTPS server needs tls.mode SIMPLE and a credentialName (a TLS Secret, "
                                 "e.g. kubectl create -n istio-system secret tls NAME --key=... --cert=...)"))
            continue
        namespaces = credential_namespaces(gateway)
        if find_secret(resources, credential, namespaces) is None:
            found.append(Message(
                codes.MK0404, Severity.ERROR, gateway.ref, f"{where}.credentialName",
                f'Secret "{credential}" not found in namespace {" or ".join(namespaces)}: apply it first '
                f"(kubectl create -n {namespaces[0]} secret tls {credential} --key=KEY --cert=CERT "
                "--dry-run=client -o yaml | meshkit apply -f -)"))
    return found


def _check_deployment(deployment: Deployment, accounts: set[tuple[str, str]]) -> list[Message]:
    found: list[Message] = []
    ref, spec = deployment.ref, deployment.spec
    containers = spec.template.spec.containers
    image = containers[0].image
    if sample_app(image) is None and not is_mesh_ingress_deployment(deployment):
        found.append(Message(
            codes.MK0301, Severity.ERROR, ref, "spec.template.spec.containers[0].image",
            f'image "{image}" is not one of Istio\'s sample images, so the local mesh has nothing to run '
            f"for it (known: {known_images()})"))
    labels = deployment.pod_labels
    missing = {k: v for k, v in spec.selector.match_labels.items() if labels.get(k) != v}
    if missing:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
        found.append(Message(
            codes.MK0302, Severity.ERROR, ref, "spec.template.metadata.labels",
            f"the pod template must carry the labels of spec.selector.matchLabels ({wanted}); "
            "`selector` does not match template `labels`"))
    account = spec.template.spec.account
    if account != "default" and (deployment.metadata.namespace, account) not in accounts:
        found.append(Message(
            codes.MK0304, Severity.WARNING, ref, "spec.template.spec.serviceAccountName",
            f'ServiceAccount "{account}" is not defined in namespace {deployment.metadata.namespace} '
            "(the instances still run with its identity)"))
    if len(containers) > 1:
        found.append(Message(
            codes.MK0305, Severity.WARNING, ref, "spec.template.spec.containers",
            f"{len(containers)} containers: the local mesh runs the first one ({containers[0].name})"))
    return (found + check_proxy_config(deployment) + check_user_volumes(deployment)
            + check_annotations(deployment))


def _check_service(service: Service, deployments: Sequence[Deployment],
                   registry: RegistryView | None) -> list[Message]:
    selector = service.spec.selector
    if not selector:
        return [Message(codes.MK0303, Severity.ERROR, service.ref, "spec.selector",
                        "a Service needs a selector on the local mesh (it has no endpoints to list by hand)")]
    namespace = service.metadata.namespace
    if any(d.metadata.namespace == namespace and selects(selector, d.pod_labels) for d in deployments):
        return []
    if registry is not None and any(e.namespace == namespace and selects(selector, e.labels)
                                    for e in registry.endpoints):
        return []
    wanted = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
    return [Message(codes.MK0303, Severity.ERROR, service.ref, "spec.selector",
                    f"selects no pod: no Deployment in namespace {namespace} has pods labelled {wanted}")]
