"""Gateway API kinds on a cluster (KMock): GatewayClass, Gateway, HTTPRoute, TLSRoute mirrored like Istio's.

KMock serves the Gateway API standard-channel resources (`operator_harness.prepare`) next to the Istio
ones. A real control plane with the Kubernetes backend must mirror Gateway API's ``Gateway`` as its own
kind (stored as ``Gateway.gateway.networking.k8s.io``) beside Istio's ``Gateway`` of the same name, and
an HTTPRoute on a Service must reach the sidecars' snapshots with Gateway API's path semantics. The
cluster client (`ClusterClient`, what ``meshkit apply``/``get`` use on Kubernetes) must write and read
Gateway API's Gateway at its own collection. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import aiohttp
import pytest
import yaml

from meshkit.config.compile import compile_snapshot
from meshkit.k8s.cluster_config import ClusterClient
from meshkit.k8s.control_plane import RunningKubernetesControlPlane
from meshkit.k8s.targets import cluster_client
from tests.k8s import kube_objects as k
from tests.k8s.cluster_harness import WAIT_S, objects
from tests.k8s.operator_harness import until

pytestmark = pytest.mark.timeout(90)
GROUP = "gateway.networking.k8s.io"
KUBE_GATEWAY_KEY = f"Gateway.{GROUP}"

GATEWAY_CLASS = {"apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": "istio"},
                 "spec": {"controllerName": "istio.io/gateway-controller"}}
KUBE_GATEWAY = {"apiVersion": f"{GROUP}/v1", "kind": "Gateway",
                "metadata": {"name": "bookinfo-gateway", "namespace": k.NAMESPACE},
                "spec": {"gatewayClassName": "istio",
                         "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                                        "allowedRoutes": {"namespaces": {"from": "Same"}}}]}}
ISTIO_GATEWAY = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                 "metadata": {"name": "bookinfo-gateway", "namespace": k.NAMESPACE},
                 "spec": {"selector": {"istio": "ingressgateway"},
                          "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                                       "hosts": ["*"]}]}}
INGRESS_ROUTE = {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute",
                 "metadata": {"name": "bookinfo", "namespace": k.NAMESPACE},
                 "spec": {"parentRefs": [{"name": "bookinfo-gateway"}],
                          "rules": [{"matches": [{"path": {"type": "PathPrefix",
                                                          "value": "/api/v1/products"}}],
                                     "backendRefs": [{"name": "productpage", "port": k.PORT}]}]}}
MESH_ROUTE = {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute",
              "metadata": {"name": "reviews", "namespace": k.NAMESPACE},
              "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": k.PORT}],
                       "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/reviews/"}}],
                                  "backendRefs": [{"name": "reviews", "port": k.PORT}]}]}}
PATHS = {"GatewayClass": "gatewayclasses", "Gateway": "gateways", "HTTPRoute": "httproutes"}


def path_of(document: dict[str, Any], *, named: bool = False) -> str:
    group = document["apiVersion"].rsplit("/", 1)[0]
    plural = PATHS[document["kind"]]  # Istio's Gateway is "gateways" too
    namespace = document["metadata"].get("namespace")
    path = f"/apis/{group}/v1/namespaces/{namespace}/{plural}" if namespace else f"/apis/{group}/v1/{plural}"
    return f"{path}/{document['metadata']['name']}" if named else path


def served(document: dict[str, Any]) -> dict[str, Any]:
    doc = k.as_served(document)
    doc.pop("status")  # the API server keeps another controller's status; the mirror drops it
    return doc


async def call(function: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(function, *args, **kwargs)


def snapshot_of(plane: RunningKubernetesControlPlane, workload: k.Workload) -> dict[str, Any]:
    control = plane.control_plane
    node = control.registry.node_for(f"{workload.pod}.{k.NAMESPACE}")
    return compile_snapshot(control.store.resources(), control.registry.view(), node)


async def test_the_gateway_api_kinds_are_mirrored_beside_istios_gateway(
        kmock: Any, plane: RunningKubernetesControlPlane, session: aiohttp.ClientSession) -> None:
    store = plane.control_plane.store
    kube = k.Cluster(session, str(kmock.url))
    for document in (GATEWAY_CLASS, KUBE_GATEWAY, ISTIO_GATEWAY, INGRESS_ROUTE, MESH_ROUTE):
        await kube.request("POST", path_of(document), served(document))

    def keys() -> set[tuple[str, str, str]]:
        return {r.key for r in store.resources()}

    expected = {("GatewayClass", "default", "istio"), (KUBE_GATEWAY_KEY, k.NAMESPACE, "bookinfo-gateway"),
                ("Gateway", k.NAMESPACE, "bookinfo-gateway"), ("HTTPRoute", k.NAMESPACE, "bookinfo"),
                ("HTTPRoute", k.NAMESPACE, "reviews")}
    await until("the Gateway API kinds mirrored", lambda: expected <= keys(), WAIT_S)
    assert plane.sync.stats.left_out == {}
    [kube_gateway] = [r for r in store.resources() if r.key[0] == KUBE_GATEWAY_KEY]
    assert kube_gateway.to_dict()["spec"] == KUBE_GATEWAY["spec"]
    [istio_gateway] = [r for r in store.resources() if r.key[0] == "Gateway"]
    assert istio_gateway.to_dict()["spec"]["selector"] == {"istio": "ingressgateway"}

    # the GAMMA route reaches productpage's sidecar, with Gateway API's segment prefix
    productpage = k.WORKLOADS[0]
    host = next(h for h in snapshot_of(plane, productpage)["outbound"]["virtual_hosts"]
                if h["service"] == "reviews")
    [route] = host["routes"]
    assert route["source"] == f"HTTPRoute/{k.NAMESPACE}/reviews#http[0]"
    assert route["match"][0]["uri"] == {"path_separated_prefix": "/reviews"}

    # deleting Gateway API's Gateway leaves Istio's of the same name alone
    await kube.request("DELETE", path_of(KUBE_GATEWAY, named=True))
    kube_key = (KUBE_GATEWAY_KEY, k.NAMESPACE, "bookinfo-gateway")
    await until("the delete mirrored", lambda: kube_key not in keys(), WAIT_S)
    assert ("Gateway", k.NAMESPACE, "bookinfo-gateway") in keys()
    assert store.history()[-1].summary == (
        f"kubernetes: deleted {KUBE_GATEWAY_KEY}/{k.NAMESPACE}/bookinfo-gateway")


async def test_the_cluster_client_writes_and_reads_gateway_apis_gateway_at_its_own_collection(
        kmock: Any, plane: RunningKubernetesControlPlane, session: aiohttp.ClientSession) -> None:
    client: ClusterClient = cluster_client(f"k8s:{str(kmock.url).rstrip('/')}", mirror_wait_s=WAIT_S)
    documents = [copy.deepcopy(d) for d in (KUBE_GATEWAY, ISTIO_GATEWAY, INGRESS_ROUTE)]
    answer = await call(client.apply, documents)
    assert sorted((r["resource"], r["action"]) for r in answer["results"]) == [
        (f"{KUBE_GATEWAY_KEY}/{k.NAMESPACE}/bookinfo-gateway", "created"),
        (f"Gateway/{k.NAMESPACE}/bookinfo-gateway", "created"),
        (f"HTTPRoute/{k.NAMESPACE}/bookinfo", "created")]
    [held] = await objects(session, kmock, f"/apis/{GROUP}/v1/gateways")
    assert held["spec"] == KUBE_GATEWAY["spec"]
    [istio] = await objects(session, kmock, "/apis/networking.istio.io/v1/gateways")
    assert istio["spec"] == ISTIO_GATEWAY["spec"]
    assert answer["revision"] == plane.control_plane.store.revision

    found = await call(client.get, "gateways.gateway.networking.k8s.io", None, k.NAMESPACE)
    assert [item["ref"] for item in found["items"]] == [f"{KUBE_GATEWAY_KEY}/{k.NAMESPACE}/bookinfo-gateway"]
    one = await call(client.get, "gateways.gateway.networking.k8s.io", "bookinfo-gateway", k.NAMESPACE)
    assert one["items"][0]["resource"]["spec"]["gatewayClassName"] == "istio"
    istio_only = await call(client.get, "gateway", None, k.NAMESPACE)
    assert [item["ref"] for item in istio_only["items"]] == [f"Gateway/{k.NAMESPACE}/bookinfo-gateway"]

    deleted = await call(client.delete, "gateways.gateway.networking.k8s.io", "bookinfo-gateway", k.NAMESPACE)
    assert deleted["revision"] == plane.control_plane.store.revision
    assert await objects(session, kmock, f"/apis/{GROUP}/v1/gateways") == []
    assert len(await objects(session, kmock, "/apis/networking.istio.io/v1/gateways")) == 1


async def test_httproute_status_on_a_cluster_names_a_parent_to_nothing_and_a_missing_backend(
        kmock: Any, plane: RunningKubernetesControlPlane, session: aiohttp.ClientSession) -> None:
    """``meshkit --context k8s:... get httproute NAME -o yaml``: the status a controller wrote, else the one
    meshkit computes from the cluster's objects and the control plane's registry, as on the local mesh."""
    kube = k.Cluster(session, str(kmock.url))
    typo = copy.deepcopy(MESH_ROUTE)
    typo["metadata"]["name"] = "typo"
    typo["spec"]["parentRefs"][0]["name"] = "reviewz"
    typo["spec"]["rules"][0]["backendRefs"][0]["name"] = "reviews-v9"
    written = copy.deepcopy(INGRESS_ROUTE)
    accepted = {"type": "Accepted", "status": "True", "reason": "Accepted"}
    written_status = {"parents": [{"parentRef": {"name": "bookinfo-gateway"},
                                   "controllerName": "example.com/gw", "conditions": [accepted]}]}
    for document in (MESH_ROUTE, typo):
        await kube.request("POST", path_of(document), served(document))
    await kube.request("POST", path_of(written), {**served(written), "status": written_status})
    client = cluster_client(f"k8s:{str(kmock.url).rstrip('/')}", mirror_wait_s=WAIT_S)

    async def status_of(name: str) -> dict[str, Any]:
        text = await call(client.get, "httproute", name, k.NAMESPACE, "yaml")
        (doc,) = [d for d in yaml.safe_load_all(text) if d]
        status: dict[str, Any] = doc["status"]
        return status

    (parent,) = (await status_of("typo"))["parents"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in parent["conditions"]}
    assert conditions == {"Accepted": ("False", "NoMatchingParent"),
                          "ResolvedRefs": ("False", "BackendNotFound")}
    assert f"{k.NAMESPACE}/reviews-v9" in parent["conditions"][1]["message"]
    (good,) = (await status_of("reviews"))["parents"]
    assert [(c["status"], c["reason"]) for c in good["conditions"]] == [("True", "Accepted"),
                                                                       ("True", "ResolvedRefs")]
    assert await status_of("bookinfo") == written_status  # a controller's own status is shown as written


# "Ingress Gateway without TLS Termination", Gateway API tab: the Gateway and the TLSRoute (v1alpha2)
PASSTHROUGH_GATEWAY = {"apiVersion": f"{GROUP}/v1", "kind": "Gateway",
                       "metadata": {"name": "mygateway", "namespace": k.NAMESPACE},
                       "spec": {"gatewayClassName": "istio",
                                "listeners": [{"name": "https", "hostname": "nginx.example.com", "port": 443,
                                               "protocol": "TLS", "tls": {"mode": "Passthrough"},
                                               "allowedRoutes": {"namespaces": {"from": "All"}}}]}}
TLS_ROUTE = {"apiVersion": f"{GROUP}/v1alpha2", "kind": "TLSRoute",
             "metadata": {"name": "nginx", "namespace": k.NAMESPACE},
             "spec": {"parentRefs": [{"name": "mygateway"}], "hostnames": ["nginx.example.com"],
                      "rules": [{"backendRefs": [{"name": "reviews", "port": k.PORT}]}]}}


async def test_a_tlsroute_is_mirrored_from_its_v1alpha2_collection_and_deleted_with_it(
        kmock: Any, plane: RunningKubernetesControlPlane, session: aiohttp.ClientSession) -> None:
    store = plane.control_plane.store
    kube = k.Cluster(session, str(kmock.url))
    await kube.request("POST", path_of(PASSTHROUGH_GATEWAY), served(PASSTHROUGH_GATEWAY))
    collection = f"/apis/{GROUP}/v1alpha2/namespaces/{k.NAMESPACE}/tlsroutes"
    await kube.request("POST", collection, served(TLS_ROUTE))

    def keys() -> set[tuple[str, str, str]]:
        return {r.key for r in store.resources()}

    route_key = ("TLSRoute", k.NAMESPACE, "nginx")
    await until("the TLSRoute mirrored", lambda: route_key in keys(), WAIT_S)
    assert plane.sync.stats.left_out == {}
    [route] = [r for r in store.resources() if r.key == route_key]
    spec = route.to_dict()["spec"]
    assert (spec["parentRefs"], spec["hostnames"]) == ([{"name": "mygateway"}], ["nginx.example.com"]), spec
    assert [(b["name"], b["port"]) for b in spec["rules"][0]["backendRefs"]] == [("reviews", k.PORT)], spec
    await kube.request("DELETE", f"{collection}/nginx")
    await until("the delete mirrored", lambda: route_key not in keys(), WAIT_S)
