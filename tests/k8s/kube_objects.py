"""A small Bookinfo as a cluster holds it (Services, Pods, EndpointSlices, Istio objects), and the
same workloads as the local runtime registers them: the two inputs the Kubernetes backend tests compare.

Pods look like a Deployment's pods after injection (owner ReplicaSet, ``pod-template-hash``,
the ``meshkit-proxy`` container); Istio objects carry the metadata an API server adds.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml

NAMESPACE = "bookinfo"
PORT = 9080


@dataclass(frozen=True)
class Workload:
    service: str
    version: str
    ip: str
    sidecar: bool = True

    @property
    def deployment(self) -> str:
        return f"{self.service}-{self.version}"

    @property
    def template_hash(self) -> str:
        return hashlib.sha256(self.deployment.encode()).hexdigest()[:10]

    @property
    def pod(self) -> str:
        return f"{self.deployment}-{self.template_hash}-x{self.ip.rsplit('.', 1)[-1]}"

    @property
    def service_account(self) -> str:
        return f"bookinfo-{self.service}"


WORKLOADS = (
    Workload("productpage", "v1", "10.244.0.10"),
    Workload("reviews", "v1", "10.244.0.11"),
    Workload("reviews", "v2", "10.244.0.12"),
    Workload("reviews", "v3", "10.244.0.13"),
    Workload("ratings", "v1", "10.244.0.14"),
)

ISTIO_YAML = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v3}, weight: 20}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-viewer, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookinfo/sa/bookinfo-reviews]}}]
    to: [{operation: {methods: [GET]}}]
"""

# a VirtualService spec sending every request to reviews v3 (what the update tests change to)
ALL_TO_V3 = {"hosts": ["reviews"],
             "http": [{"route": [{"destination": {"host": "reviews", "subset": "v3"}}]}]}

PLURALS = {"VirtualService": ("networking.istio.io", "virtualservices"),
           "DestinationRule": ("networking.istio.io", "destinationrules"),
           "PeerAuthentication": ("security.istio.io", "peerauthentications"),
           "AuthorizationPolicy": ("security.istio.io", "authorizationpolicies"),
           "RequestAuthentication": ("security.istio.io", "requestauthentications")}


def istio_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(ISTIO_YAML) if doc]


def as_served(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with what the API server and kubectl add: uid, versions, managed fields, status."""
    served = copy.deepcopy(document)
    metadata = served["metadata"]
    metadata.update(uid=str(uuid.uuid4()), resourceVersion="4711", generation=1,
                    creationTimestamp="2026-11-26T00:00:00Z",
                    managedFields=[{"manager": "kubectl-client-side-apply", "operation": "Update"}],
                    annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"})
    served["status"] = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}
    return served


def istio_path(document: dict[str, Any], *, named: bool = False) -> str:
    group, plural = PLURALS[document["kind"]]
    path = f"/apis/{group}/v1/namespaces/{document['metadata']['namespace']}/{plural}"
    return f"{path}/{document['metadata']['name']}" if named else path


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
            "spec": {"selector": {"app": name}, "ports": [
                {"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]}}


def pod(workload: Workload) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [
        {"name": workload.service, "image": "meshkit:dev", "ports": [{"containerPort": PORT}]}]
    if workload.sidecar:
        containers.append({"name": "meshkit-proxy", "image": "meshkit:dev"})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": workload.pod, "namespace": NAMESPACE,
            "labels": {"app": workload.service, "version": workload.version,
                       "pod-template-hash": workload.template_hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": True,
                                 "name": f"{workload.deployment}-{workload.template_hash}",
                                 "uid": str(uuid.uuid4())}],
        },
        "spec": {"serviceAccountName": workload.service_account, "containers": containers},
        "status": {"podIP": workload.ip, "phase": "Running"},
    }


def slice_entry(workload: Workload, *, ready: bool = True) -> dict[str, Any]:
    return {"addresses": [workload.ip], "conditions": {"ready": ready},
            "targetRef": {"kind": "Pod", "name": workload.pod, "namespace": NAMESPACE}}


def endpoint_slice(name: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-abcde", "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
            "endpoints": entries}


def services() -> list[str]:
    return sorted({w.service for w in WORKLOADS})


def local_service(name: str) -> dict[str, Any]:
    """The registration the local runtime sends for a service."""
    return {"name": name, "namespace": NAMESPACE, "port": PORT}


def local_endpoint(workload: Workload) -> dict[str, Any]:
    """The registration the local runtime sends for one instance (docs/control-plane.md)."""
    return {"instance": workload.pod, "workload": workload.deployment, "service": workload.service,
            "namespace": NAMESPACE, "address": workload.ip, "port": PORT,
            "labels": {"app": workload.service, "version": workload.version},
            "service_account": workload.service_account, "has_sidecar": workload.sidecar,
            "healthy": True, "app_port": PORT}


class Cluster:
    """Writes objects into KMock through its HTTP API, as kubectl and the controllers would."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = str(url).rstrip("/")

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else None
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            text = await response.text()
            assert response.status in (200, 201), f"{method} {path}: {response.status} {text}"
            answer: dict[str, Any] = await response.json()
            return answer

    async def create_bookinfo(self) -> None:
        for name in services():
            await self.request("POST", f"/api/v1/namespaces/{NAMESPACE}/services", service(name))
        for workload in WORKLOADS:
            await self.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod(workload))
        for name in services():
            entries = [slice_entry(w) for w in WORKLOADS if w.service == name]
            await self.request("POST", f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
                               endpoint_slice(name, entries))
        for document in istio_documents():
            await self.request("POST", istio_path(document), as_served(document))

# weights that sum to 0 (Istio: "total destination weight = 0"): the analyzer's MK0102, refused by
# the webhook and by the cluster client
BAD_WEIGHTS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 0}
    - {destination: {host: reviews, subset: v2}, weight: 0}
"""
