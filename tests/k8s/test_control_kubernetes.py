"""The control plane's Kubernetes backend against KMock: the cluster mirrored into the store and registry.

A real control plane (`run_kubernetes_control_plane`, port 0) follows a KMock API server that
holds a small Bookinfo (Services, Pods after injection, EndpointSlices) and Istio objects as an
API server serves them. The snapshots it builds, and streams over the real push protocol, must
equal those of a local control plane given the same workloads the way the local runtime
registers them and the same YAML through ``apply``. Then updates and deletes in the cluster
propagate, and the store refuses writes that bypass the cluster. Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.control.registry import parse_endpoint, parse_service
from meshkit.control.server import ControlPlane
from meshkit.k8s.api import KubeAccess
from meshkit.k8s.control_plane import (
    RunningKubernetesControlPlane,
    SyncOptions,
    run_kubernetes_control_plane,
)
from tests.control.sse import Subscriber
from tests.k8s import kube_objects as k
from tests.k8s.operator_harness import prepare, until

pytestmark = pytest.mark.timeout(60)
WAIT_S = 15.0


@pytest.fixture()
async def cluster(kmock: Any, session: aiohttp.ClientSession) -> k.Cluster:
    prepare(kmock)
    return k.Cluster(session, kmock.url)


async def start(kmock: Any, state_dir: Path, **options: Any) -> RunningKubernetesControlPlane:
    running = await run_kubernetes_control_plane(
        KubeAccess.url(str(kmock.url)), port=0, state_dir=state_dir, record_address=False,
        sync_options=SyncOptions(debounce_s=0.01, max_backoff_s=0.5), **options)
    assert await running.sync.wait_synced(WAIT_S), f"not synced: {running.sync.stats}"
    return running


@pytest.fixture()
async def kube_plane(kmock: Any, cluster: k.Cluster,
                     tmp_path: Path) -> AsyncIterator[RunningKubernetesControlPlane]:
    await cluster.create_bookinfo()
    running = await start(kmock, tmp_path / "kube", with_ca=False)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture()
def local_plane(tmp_path: Path) -> Any:
    """A local control plane given the same workloads and config the way the local runtime gives them."""
    plane = ControlPlane(tmp_path / "local", with_ca=False)
    for name in k.services():
        plane.registry.register_service(parse_service(k.local_service(name)))
    for workload in k.WORKLOADS:
        plane.registry.register_endpoint(parse_endpoint(k.local_endpoint(workload)))
    plane.store.apply(load_resources(k.ISTIO_YAML), plane.registry.view())
    plane.registry.set_external({}, real_dns=True)  # as on a cluster: names resolve with its DNS
    yield plane
    plane.close()


def snapshot_of(plane: Any, proxy_id: str) -> dict[str, Any]:
    node = plane.registry.node_for(proxy_id)
    return compile_snapshot(plane.store.resources(), plane.registry.view(), node)


def reviews(version: str) -> k.Workload:
    return next(w for w in k.WORKLOADS if w.deployment == f"reviews-{version}")


async def test_snapshots_from_crds_and_endpointslices_equal_the_local_registry(
        kube_plane: RunningKubernetesControlPlane, local_plane: Any) -> None:
    plane = kube_plane.control_plane
    assert len(plane.registry.endpoints()) == len(k.WORKLOADS)
    for workload in k.WORKLOADS:
        proxy_id = f"{workload.pod}.{k.NAMESPACE}"
        assert snapshot_of(plane, proxy_id) == snapshot_of(local_plane, proxy_id), proxy_id

    # the equal snapshots are the real thing, not two empty ones
    snapshot = snapshot_of(plane, f"{reviews('v2').pod}.{k.NAMESPACE}")
    assert snapshot["node"]["workload"] == "reviews-v2"
    assert snapshot["node"]["labels"] == {"app": "reviews", "version": "v2"}  # pod-template-hash left out
    assert snapshot["node"]["identity"] == "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
    assert snapshot["inbound"]["app"]["port"] == k.PORT
    assert snapshot["inbound"]["mtls"]["mode"] == "STRICT"
    [endpoint] = snapshot["clusters"]["reviews.bookinfo|v2"]["endpoints"]
    assert (endpoint["address"], endpoint["port"], endpoint["has_sidecar"]) == ("10.244.0.12", k.PORT, True)
    host = next(h for h in snapshot["outbound"]["virtual_hosts"] if h["service"] == "reviews")
    assert [r["route"][0]["cluster"] for r in host["routes"]] == ["reviews.bookinfo|v2",
                                                                   "reviews.bookinfo|v1"]
    ratings = snapshot_of(plane, f"{k.WORKLOADS[-1].pod}.{k.NAMESPACE}")
    assert ratings["inbound"]["authz"]["allow"][0]["name"] == "bookinfo/ratings-viewer"


async def test_a_sidecar_gets_the_same_snapshot_over_the_push_stream_and_cluster_changes(
        kube_plane: RunningKubernetesControlPlane, local_plane: Any, session: aiohttp.ClientSession,
        cluster: k.Cluster) -> None:
    proxy_id = f"{k.WORKLOADS[0].pod}.{k.NAMESPACE}"
    admin = kube_plane.running.admin_headers
    subscriber = await Subscriber(session, kube_plane.url, proxy_id, headers=admin).start()
    try:
        first = await subscriber.next(WAIT_S)
        expected = snapshot_of(local_plane, proxy_id)
        assert first["version"] == expected["version"]
        assert {**first, "revision": 0} == expected

        [vs] = [d for d in k.istio_documents() if d["kind"] == "VirtualService"]
        await cluster.request("PATCH", k.istio_path(vs, named=True), {"spec": k.ALL_TO_V3})
        pushed = await subscriber.next(WAIT_S)
    finally:
        await subscriber.close()
    host = next(h for h in pushed["outbound"]["virtual_hosts"] if h["service"] == "reviews")
    assert [r["route"][0]["cluster"] for r in host["routes"]] == ["reviews.bookinfo|v3"]
    assert pushed["revision"] == first["revision"] + 1


async def test_history_names_kubernetes_and_api_writes_are_refused(
        kube_plane: RunningKubernetesControlPlane, session: aiohttp.ClientSession) -> None:
    store = kube_plane.control_plane.store
    [revision] = store.history()
    assert revision.summary.startswith("kubernetes: created AuthorizationPolicy/bookinfo/ratings-viewer")
    assert "created VirtualService/bookinfo/reviews" in revision.summary
    for method, path, body in (("POST", "/api/v1/apply", k.ISTIO_YAML),
                               ("DELETE", "/api/v1/config/vs/bookinfo/reviews", None),
                               ("POST", "/api/v1/rollback", '{"revision": 0}')):
        headers = {**kube_plane.running.admin_headers, "Content-Type": "application/yaml"}
        async with session.request(method, kube_plane.url + path, data=body, headers=headers) as response:
            assert response.status == 409, await response.text()
            answer = await response.json()
        assert answer["messages"][0]["code"] == "MK0906"
        assert "mirrored from kubernetes" in answer["error"] and "kubectl apply" in answer["error"]
    assert store.revision == 1


async def test_crd_update_and_delete_propagate_to_the_snapshot(
        kube_plane: RunningKubernetesControlPlane, cluster: k.Cluster) -> None:
    plane = kube_plane.control_plane
    productpage = f"{k.WORKLOADS[0].pod}.{k.NAMESPACE}"
    [vs] = [d for d in k.istio_documents() if d["kind"] == "VirtualService"]

    def first_routes() -> list[str]:
        host = next(h for h in snapshot_of(plane, productpage)["outbound"]["virtual_hosts"]
                    if h["service"] == "reviews")
        return [r["route"][0]["cluster"] for r in host["routes"]]

    assert first_routes() == ["reviews.bookinfo|v2", "reviews.bookinfo|v1"]
    await cluster.request("PATCH", k.istio_path(vs, named=True), {"spec": k.ALL_TO_V3})
    await until("the update mirrored", lambda: first_routes() == ["reviews.bookinfo|v3"], WAIT_S)
    assert plane.store.history()[-1].summary == "kubernetes: configured VirtualService/bookinfo/reviews"

    await cluster.request("DELETE", k.istio_path(vs, named=True))
    await until("the delete mirrored", lambda: first_routes() == ["reviews.bookinfo|"], WAIT_S)
    assert plane.store.history()[-1].summary == "kubernetes: deleted VirtualService/bookinfo/reviews"
    assert [r.kind for r in plane.store.resources()] == ["AuthorizationPolicy", "DestinationRule",
                                                         "PeerAuthentication"]


async def test_endpoint_readiness_removal_and_new_pods_propagate(
        kube_plane: RunningKubernetesControlPlane, cluster: k.Cluster) -> None:
    registry = kube_plane.control_plane.registry
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{k.NAMESPACE}/endpointslices/reviews-abcde"

    def health() -> dict[str, bool]:
        return {r.endpoint.instance: r.endpoint.healthy for r in registry.endpoints(service="reviews")}

    # v1 not ready, v3 gone from the slice
    entries = [k.slice_entry(reviews("v1"), ready=False), k.slice_entry(reviews("v2"))]
    await cluster.request("PATCH", slices, {"endpoints": entries})
    expected = {reviews("v1").pod: False, reviews("v2").pod: True}
    await until("readiness and removal mirrored", lambda: health() == expected, WAIT_S)

    # a new replica: its slice entry waits for its pod, then it is an endpoint of its own
    v4 = k.Workload("reviews", "v4", "10.244.0.20", sidecar=False)
    await cluster.request("PATCH", slices, {"endpoints": [*entries, k.slice_entry(v4)]})
    await cluster.request("POST", f"/api/v1/namespaces/{k.NAMESPACE}/pods", k.pod(v4))
    await until("the new pod mirrored", lambda: v4.pod in health(), WAIT_S)
    [new] = [r.endpoint for r in registry.endpoints(service="reviews") if r.endpoint.instance == v4.pod]
    assert (new.workload, new.has_sidecar, new.address) == ("reviews-v4", False, "10.244.0.20")
    assert kube_plane.sync.stats.left_out == {}

    # telemetry scrapes the sidecars (v3 went, v4 has none), on their admin port
    targets = kube_plane.control_plane.telemetry.targets
    assert sorted(targets) == sorted(f"{w.pod}.{k.NAMESPACE}" for w in k.WORKLOADS if w != reviews("v3"))
    assert targets[f"{reviews('v2').pod}.{k.NAMESPACE}"] == "http://10.244.0.12:15000/stats/prometheus"

    # the service goes: so do its endpoints
    await cluster.request("DELETE", f"/api/v1/namespaces/{k.NAMESPACE}/services/reviews")
    await until("the service removal mirrored",
                lambda: [s.name for s in registry.services()] == ["productpage", "ratings"], WAIT_S)
    assert registry.endpoints(service="reviews") == []
    assert not any(name.startswith("reviews-") for name in kube_plane.control_plane.telemetry.targets)


async def test_an_object_that_does_not_load_is_left_out_and_named(
        kmock: Any, cluster: k.Cluster, tmp_path: Path) -> None:
    bad = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "typo", "namespace": k.NAMESPACE},
           "spec": {"hosts": ["ratings"], "http": [{"rout": []}]}}
    await cluster.request("POST", k.istio_path(bad), bad)
    running = await start(kmock, tmp_path / "kube", with_ca=False)
    try:
        assert running.control_plane.store.resources() == []
        [why] = running.sync.stats.left_out.values()
        assert "VirtualService/bookinfo/typo" in why and "spec.http[0].rout" in why
    finally:
        await running.close()


async def test_missing_crds_mirror_as_empty_config(kmock: Any, tmp_path: Path) -> None:
    kmock.resources.load_bundled()  # no Istio CRDs served
    running = await start(kmock, tmp_path / "kube", with_ca=False)
    try:
        assert running.control_plane.store.resources() == []
        assert running.sync.stats.errors >= 4  # one 404 per Istio kind
    finally:
        await running.close()


async def test_a_client_pod_in_no_service_gets_its_own_node(
        kube_plane: RunningKubernetesControlPlane, cluster: k.Cluster) -> None:
    sleep = k.pod(k.Workload("sleep", "v1", "10.244.0.30"))
    sleep["spec"]["serviceAccountName"] = "sleep"
    proxy_id = f"{sleep['metadata']['name']}.{k.NAMESPACE}"
    await cluster.request("POST", f"/api/v1/namespaces/{k.NAMESPACE}/pods", sleep)
    registry = kube_plane.control_plane.registry
    node = await until("the client's node", lambda: registry.node_for(proxy_id).workload, WAIT_S)
    assert node == "sleep-v1"
    snapshot = snapshot_of(kube_plane.control_plane, proxy_id)
    assert snapshot["node"]["identity"] == "spiffe://cluster.local/ns/bookinfo/sa/sleep"
    assert snapshot["node"]["labels"] == {"app": "sleep", "version": "v1"}
    assert snapshot["node"]["service"] is None
    assert [s.name for s in registry.services()] == k.services()  # no service made up for it

    await cluster.request("DELETE", f"/api/v1/namespaces/{k.NAMESPACE}/pods/{sleep['metadata']['name']}")
    await until("the node gone", lambda: registry.node_for(proxy_id).workload is None, WAIT_S)
