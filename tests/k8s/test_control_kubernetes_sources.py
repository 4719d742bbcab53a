"""Kubernetes objects -> registry and config values (pure), and reaching the API with a kubeconfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshkit.k8s import control_plane
from meshkit.k8s.api import KubeAccess, KubeApi, KubeApiError
from meshkit.k8s.inject import InjectSettings, proxy_args
from meshkit.k8s.sources import (
    ISTIO_TYPES,
    PODS,
    desired_registry,
    istio_resource,
    service_port,
    workload_name,
)
from tests.k8s import kube_objects as k
from tests.k8s.operator_harness import free_port

pytestmark = pytest.mark.timeout(30)
VIRTUAL_SERVICES = ISTIO_TYPES[0]


def test_the_scrape_port_is_the_injected_sidecars_admin_port() -> None:
    args = proxy_args(InjectSettings())
    assert int(args[args.index("--admin-port") + 1]) == control_plane.SIDECAR_ADMIN_PORT  # metrics are there


def _pod(owner: dict[str, Any] | None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "web-5d8c7-abcde", "labels": labels or {}}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {"metadata": metadata}


def test_workload_name_is_the_owner_deployment_or_controller() -> None:
    replica_set = {"kind": "ReplicaSet", "name": "reviews-v1-7f9c6d8b5d", "controller": True}
    assert workload_name(_pod(replica_set, {"pod-template-hash": "7f9c6d8b5d"})) == "reviews-v1"
    assert workload_name(_pod(replica_set)) == "reviews-v1"  # hash label missing: the suffix still goes
    assert workload_name(_pod({"kind": "StatefulSet", "name": "db", "controller": True})) == "db"
    assert workload_name(_pod(None)) == "web-5d8c7-abcde"


@pytest.mark.parametrize(("ports", "expected"), [
    ([{"name": "grpc", "port": 7070}, {"name": "http-web", "port": 8000}], (8000, "http-web")),
    ([{"name": "a", "port": 80}, {"name": "b", "port": 81, "appProtocol": "http"}], (81, "b")),
    ([{"port": 9080}], (9080, "")),
    ([{"name": "dns", "port": 53, "protocol": "UDP"}], None),
    ([], None),
])
def test_service_port_prefers_http(ports: list[dict[str, Any]], expected: tuple[int, str] | None) -> None:
    assert service_port({"spec": {"ports": ports}}) == expected


def test_external_name_services_have_no_port() -> None:
    assert service_port({"spec": {"type": "ExternalName", "ports": [{"port": 80}]}}) is None


def test_desired_registry_from_services_slices_and_pods() -> None:
    workload = k.WORKLOADS[0]
    pods = {(k.NAMESPACE, workload.pod): k.pod(workload)}
    unready = {**k.slice_entry(workload), "conditions": {}}  # unset ready means ready
    missing = k.Workload("productpage", "v9", "10.244.0.99")
    ghost = k.slice_entry(missing)
    slices = [k.endpoint_slice("productpage", [unready, ghost])]
    api = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"},
           "spec": {"ports": [{"name": "https", "port": 443}]}}
    api_slice = {"metadata": {"name": "kubernetes", "namespace": "default",
                              "labels": {"kubernetes.io/service-name": "kubernetes"}},
                 "ports": [{"name": "https", "port": 6443}], "endpoints": [{"addresses": ["172.18.0.2"]}]}
    dns = {"metadata": {"name": "kube-dns", "namespace": "kube-system"}, "spec": {"ports": [{"port": 53}]}}
    desired = desired_registry([k.service("productpage"), api, dns], [*slices, api_slice], pods,
                               frozenset({"kube-system"}))
    assert sorted(desired.services) == [("bookinfo", "productpage"), ("default", "kubernetes")]
    mesh = desired.endpoints[(k.NAMESPACE, workload.pod)]
    assert mesh.to_dict() == {**k.local_endpoint(workload)}
    outside = desired.endpoints[("default", "kubernetes-172-18-0-2")].endpoint
    assert (outside.address, outside.port, outside.has_sidecar, outside.service) == (
        "172.18.0.2", 6443, False, "kubernetes")
    assert desired.left_out == [f"Pod/bookinfo/{missing.pod}: in service productpage but not seen yet"]


def test_a_pod_in_two_services_is_kept_in_one_and_named() -> None:
    workload = k.WORKLOADS[0]
    pods = {(k.NAMESPACE, workload.pod): k.pod(workload)}
    slices = [k.endpoint_slice(name, [k.slice_entry(workload)]) for name in ("productpage", "web")]
    desired = desired_registry([k.service("productpage"), k.service("web")], slices, pods)
    assert desired.endpoints[(k.NAMESPACE, workload.pod)].endpoint.service == "productpage"
    assert desired.left_out == [f"Pod/bookinfo/{workload.pod}: also in service web; meshkit keeps one "
                                "service per instance (productpage)"]


def test_istio_objects_lose_server_metadata_and_keep_their_own() -> None:
    [vs] = [d for d in k.istio_documents() if d["kind"] == "VirtualService"]
    served = k.as_served(vs)
    served["metadata"]["annotations"]["team"] = "reviews"
    # the operator's kopf bookkeeping would be a new config revision at every status write
    served["metadata"]["annotations"]["operator.meshkit.dev/last-handled-configuration"] = "{}"
    served["metadata"]["annotations"]["operator.meshkit.dev/kopf-managed"] = "yes"
    served["metadata"]["labels"] = {"app": "reviews"}
    resource, messages = istio_resource(served, VIRTUAL_SERVICES)
    assert messages == [] and resource is not None
    assert resource.to_dict()["metadata"] == {"name": "reviews", "namespace": "bookinfo",
                                              "labels": {"app": "reviews"},
                                              "annotations": {"team": "reviews"}}


def test_an_istio_object_that_does_not_load_names_resource_and_field() -> None:
    bad = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "x", "namespace": "ns"}, "spec": {"hosts": ["a"], "tcp": [{}]}}
    resource, [message, *_] = istio_resource(bad, VIRTUAL_SERVICES)
    assert resource is None
    assert message.resource == "VirtualService/ns/x" and message.field.startswith("spec.tcp")


async def test_a_kubeconfig_with_a_token_reaches_the_api(kmock: Any, tmp_path: Path) -> None:
    kmock.resources.load_bundled()
    config = tmp_path / "kubeconfig"
    config.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: kind, cluster: {{server: "{str(kmock.url).rstrip('/')}"}}}}]
users: [{{name: student, user: {{token: s3cret-token}}}}]
contexts: [{{name: kind, context: {{cluster: kind, user: student}}}}]
current-context: kind
""")
    async with KubeApi(KubeAccess.from_kubeconfig(str(config))) as api:
        items, _ = await api.list(PODS)
    assert items == []
    [request] = [r for r in list(kmock) if r.url.path == "/api/v1/pods"]
    assert request.headers["Authorization"] == "Bearer s3cret-token"


async def test_api_errors_name_the_call_and_the_reason(kmock: Any) -> None:
    kmock.resources.load_bundled()
    async with KubeApi(KubeAccess.url(str(kmock.url))) as api:
        with pytest.raises(KubeApiError) as missing:
            await api.list(VIRTUAL_SERVICES)
    assert missing.value.status == 404
    assert str(missing.value).startswith("list virtualservices.networking.istio.io/v1: HTTP 404: ")
    async with KubeApi(KubeAccess.url(f"http://127.0.0.1:{free_port()}"), timeout_s=5) as api:
        with pytest.raises(KubeApiError) as unreachable:
            await api.list(PODS)
    assert unreachable.value.status == 0 and "cannot reach http://127.0.0.1:" in str(unreachable.value)


def test_pods_with_a_sidecar_in_no_service_are_workloads() -> None:
    client = k.Workload("sleep", "v1", "10.244.0.30")
    plain = k.Workload("job", "v1", "10.244.0.31", sidecar=False)
    pods = {(k.NAMESPACE, w.pod): k.pod(w) for w in (client, plain)}
    pods[("kube-system", "coredns-1")] = {**k.pod(client), "metadata": {"name": "coredns-1"}}
    desired = desired_registry([], [], pods, frozenset({"kube-system"}))
    [node] = desired.workloads
    assert (node.instance, node.namespace, node.workload, node.service) == (client.pod, k.NAMESPACE,
                                                                             "sleep-v1", None)
    assert (node.labels, node.service_account, node.app_port) == (
        {"app": "sleep", "version": "v1"}, "bookinfo-sleep", k.PORT)
