"""`ClusterClient` against KMock and a real control plane following it (`tests.k8s.cluster_harness`).

Writes must reach the Kubernetes API (the CRD objects in KMock) and then the control plane's
mirror; bad input must be refused with the field named and nothing written; the API server's
own refusal must come back verbatim; reads of the mesh must reach the control plane through the
API server's service proxy. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import aiohttp
import kmock as kmocklib
import pytest

from meshkit.control.client import ApiError, ControlUnreachable
from meshkit.k8s.admission import admission_messages, rejection_text
from meshkit.k8s.cluster_config import ClusterClient, merge_patch
from meshkit.k8s.control_plane import RunningKubernetesControlPlane
from meshkit.k8s.targets import cluster_client
from tests.control.sse import Subscriber
from tests.k8s import kube_objects as k
from tests.k8s.cluster_harness import WAIT_S, objects
from tests.k8s.operator_harness import prepare, until

pytestmark = pytest.mark.timeout(90)
VS_COLLECTION = "/apis/networking.istio.io/v1/virtualservices"
DR_COLLECTION = "/apis/networking.istio.io/v1/destinationrules"


@pytest.fixture()
def client(kmock: Any, plane: RunningKubernetesControlPlane) -> ClusterClient:
    return cluster_client(f"k8s:{str(kmock.url).rstrip('/')}", mirror_wait_s=WAIT_S)


def documents() -> list[dict[str, Any]]:
    return k.istio_documents()


def virtual_service(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": k.NAMESPACE}, "spec": spec}


async def call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """A blocking client call, off the loop that serves KMock and the control plane."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def test_apply_creates_the_objects_then_the_control_plane_holds_them(
        client: ClusterClient, kmock: Any, session: aiohttp.ClientSession,
        plane: RunningKubernetesControlPlane) -> None:
    answer = await call(client.apply, documents())
    assert answer["changed"] is True
    assert [r["action"] for r in answer["results"]] == ["created"] * 4
    assert answer["warnings"] == []
    store = plane.control_plane.store
    assert answer["revision"] == store.revision >= 1  # the apply returned once the mirror had it
    assert sorted(r.ref for r in store.resources()) == sorted(r["resource"] for r in answer["results"])

    [held] = await objects(session, kmock, VS_COLLECTION)
    assert held["spec"] == documents()[1]["spec"]
    assert held["metadata"] == {"name": "reviews", "namespace": k.NAMESPACE}

    again = await call(client.apply, documents())
    assert again["changed"] is False and {r["action"] for r in again["results"]} == {"unchanged"}
    assert again["revision"] == answer["revision"]

    # a replace, not a merge: the jason match is gone from the object, not merged into it
    changed = await call(client.apply, [virtual_service(k.ALL_TO_V3)])
    assert changed["results"] == [{"resource": "VirtualService/bookinfo/reviews", "action": "configured"}]
    [held] = await objects(session, kmock, VS_COLLECTION)
    assert held["spec"] == k.ALL_TO_V3
    assert changed["revision"] == store.revision > answer["revision"]
    [mirrored] = [r for r in store.resources() if r.kind == "VirtualService"]
    assert mirrored.to_dict()["spec"] == k.ALL_TO_V3

    # a field left out of the new version is removed from the object (not kept, as a merge would)
    rule = documents()[0]
    del rule["spec"]["trafficPolicy"]
    await call(client.apply, [rule])
    [held_rule] = await objects(session, kmock, DR_COLLECTION)
    assert held_rule["spec"] == rule["spec"] and "trafficPolicy" not in held_rule["spec"]


async def test_get_reads_the_cluster_objects(client: ClusterClient) -> None:
    await call(client.apply, documents())
    every = await call(client.get)
    assert [item["ref"] for item in every["items"]] == [
        "AuthorizationPolicy/bookinfo/ratings-viewer", "DestinationRule/bookinfo/reviews",
        "PeerAuthentication/bookinfo/default", "VirtualService/bookinfo/reviews"]
    [vs] = (await call(client.get, "vs", None, k.NAMESPACE))["items"]
    assert vs["resource"]["spec"] == documents()[1]["spec"]
    one = await call(client.get, "VirtualService", "reviews", k.NAMESPACE)
    assert one["items"][0]["resource"]["metadata"]["name"] == "reviews"
    assert "subset: v2" in await call(client.get, "virtualservices", None, None, "yaml")
    assert (await call(client.get, "dr", None, "default"))["items"] == []

    with pytest.raises(ApiError) as missing:
        await call(client.get, "vs", "ratings", k.NAMESPACE)
    assert missing.value.status == 404 and missing.value.error == "VirtualService/bookinfo/ratings not found"
    with pytest.raises(ApiError) as unknown:
        await call(client.get, "virtualservise")
    assert unknown.value.messages[0]["field"] == "kind"
    assert "unknown resource kind 'virtualservise'" in unknown.value.messages[0]["message"]


async def test_a_bad_rule_is_refused_with_the_field_named_and_nothing_is_written(
        client: ClusterClient, kmock: Any, session: aiohttp.ClientSession) -> None:
    bad_weights = virtual_service({"hosts": ["reviews"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 0},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0}]}]})
    with pytest.raises(ApiError) as refused:
        await call(client.apply, [documents()[0], bad_weights])  # a good DestinationRule first
    [message] = [m for m in refused.value.messages if m["severity"] == "Error"]
    assert (message["code"], message["field"]) == ("MK0102", "spec.http[0].route")
    assert message["resource"] == "VirtualService/bookinfo/reviews"
    assert refused.value.status == 400 and "route weights sum to 0: no destination" in refused.value.error

    unknown_field = virtual_service({"hosts": ["reviews"], "tcp": [{"route": []}]})
    with pytest.raises(ApiError) as loader:
        await call(client.apply, [unknown_field])
    assert loader.value.messages[0]["field"].startswith("spec.tcp")

    no_subset = virtual_service({"hosts": ["reviews"],
                                 "http": [{"route": [{"destination": {"host": "reviews", "subset": "v9"}}]}]})
    with pytest.raises(ApiError) as cross:  # checked with the cluster's objects, as the local store does
        await call(client.apply, [no_subset])
    assert cross.value.messages[0]["code"] == "MK0101"

    assert await objects(session, kmock, VS_COLLECTION) == []
    assert await objects(session, kmock, DR_COLLECTION) == []


async def test_a_refusal_of_the_api_server_is_shown_verbatim_with_what_was_written(
        client: ClusterClient, kmock: Any, session: aiohttp.ClientSession) -> None:
    refusal = ('authorizationpolicies.security.istio.io "ratings-viewer" is forbidden: User "learner" cannot '
               'create resource "authorizationpolicies" in API group "security.istio.io" in the namespace '
               '"bookinfo"')
    status = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Forbidden",
              "code": 403, "message": refusal}
    kmock["post /apis/security.istio.io/v1/namespaces/bookinfo/authorizationpolicies"] << (
        lambda: kmocklib.Response(status=403, payload=status))
    with pytest.raises(ApiError) as refused:
        await call(client.apply, documents())  # DestinationRule, VirtualService, PeerAuthentication, it
    assert refused.value.status == 403
    assert refused.value.messages[0]["message"].endswith(refusal)  # verbatim
    assert refused.value.messages[0]["resource"] == "AuthorizationPolicy/bookinfo/ratings-viewer"
    assert refused.value.error.startswith("AuthorizationPolicy/bookinfo/ratings-viewer: the Kubernetes API")
    written = ("already written before it: created DestinationRule/bookinfo/reviews, created "
               "VirtualService/bookinfo/reviews, created PeerAuthentication/bookinfo/default")
    assert written in refused.value.error
    assert len(await objects(session, kmock, VS_COLLECTION)) == 1


async def test_a_denial_of_the_admission_webhook_is_shown_verbatim(client: ClusterClient, kmock: Any) -> None:
    await call(client.apply, documents())
    # the operator's own verdict text (meshkit.k8s.admission), as the API server wraps it; here it
    # denies an update the client found valid, as a webhook of another meshkit version might
    bad = virtual_service({"hosts": ["reviews"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 0},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0}]}]})
    verdict = rejection_text(admission_messages(bad))
    denial = f'admission webhook "virtualservices.validator.meshkit.dev" denied the request: {verdict}'
    status = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 400, "message": denial}
    kmock["patch /apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices/reviews"] << (
        lambda: kmocklib.Response(status=400, payload=status))
    with pytest.raises(ApiError) as refused:
        await call(client.apply, [virtual_service(k.ALL_TO_V3)])
    assert refused.value.status == 400
    assert refused.value.messages[0]["message"].endswith(denial)
    assert "Error [MK0102] (VirtualService/bookinfo/reviews spec.http[0].route)" in denial
    assert refused.value.error.endswith("refused it; nothing was written")
    # (KMock's emulator still stores the patch behind the reaction; an API server would not)


async def test_delete_by_name_and_by_documents_all_or_nothing(
        client: ClusterClient, kmock: Any, session: aiohttp.ClientSession,
        plane: RunningKubernetesControlPlane) -> None:
    await call(client.apply, documents())
    store = plane.control_plane.store

    gone = await call(client.delete, "vs", "reviews", k.NAMESPACE)
    assert gone["results"] == [{"resource": "VirtualService/bookinfo/reviews", "action": "deleted"}]
    assert await objects(session, kmock, VS_COLLECTION) == []
    assert gone["revision"] == store.revision
    assert "VirtualService" not in {r.kind for r in store.resources()}

    with pytest.raises(ApiError) as missing:  # one of two is missing: neither is deleted
        await call(client.delete_documents, documents()[:2])
    assert missing.value.status == 404
    assert [m["message"] for m in missing.value.messages] == ["VirtualService/bookinfo/reviews not found"]
    assert len(await objects(session, kmock, DR_COLLECTION)) == 1

    answer = await call(client.delete_documents, documents()[2:])
    assert [r["action"] for r in answer["results"]] == ["deleted", "deleted"]
    assert sorted(r.kind for r in store.resources()) == ["DestinationRule"]


async def test_mesh_reads_reach_the_control_plane_through_the_service_proxy(
        client: ClusterClient, session: aiohttp.ClientSession, plane: RunningKubernetesControlPlane) -> None:
    assert client.url.endswith("/api/v1/namespaces/meshkit-system/services/meshkit-control:http-control"
                               "/proxy")
    await call(client.apply, documents())
    proxy_id = f"{k.WORKLOADS[0].pod}.{k.NAMESPACE}"
    subscriber = await Subscriber(session, plane.url, proxy_id, headers=plane.running.admin_headers).start()
    try:
        await subscriber.next(WAIT_S)
        status = await call(client.proxy_status, 5.0)
    finally:
        await subscriber.close()
    assert status["synced"] is True
    assert [(p["id"], p["status"]) for p in status["proxies"]] == [(proxy_id, "SYNCED")]

    history = await call(client.history)
    assert history["revision"] == plane.control_plane.store.revision
    assert history["revisions"][-1]["summary"].startswith("kubernetes: created")
    telemetry = await call(client.request, "GET", "telemetry", query={"window": 30})
    assert "edges" in telemetry
    graph = await call(client.request, "GET", "telemetry/graph", query={"window": 30})
    assert isinstance(graph, dict) and graph

    with pytest.raises(ApiError) as rollback:
        await call(client.rollback, 0)
    assert rollback.value.status == 409 and rollback.value.messages[0]["code"] == "MK0951"
    assert "git" in rollback.value.error and "kubectl apply -f" in rollback.value.error


async def test_analyze_runs_locally_on_the_cluster_objects(
        client: ClusterClient, kmock: Any, session: aiohttp.ClientSession) -> None:
    await call(client.apply, documents())
    assert (await call(client.analyze))["errors"] == 0
    no_subset = virtual_service({"hosts": ["reviews"],
                                 "http": [{"route": [{"destination": {"host": "reviews", "subset": "v9"}}]}]})
    answer = await call(client.analyze, [no_subset])
    assert answer["errors"] == 1 and answer["messages"][0]["code"] == "MK0101"
    assert len(await objects(session, kmock, VS_COLLECTION)) == 1  # analyze writes nothing

    # the registry the control plane built from the cluster takes part: a host no Service has
    to_ghost = {"hosts": ["ghost"], "http": [{"route": [{"destination": {"host": "ghost"}}]}]}
    ghost = {**virtual_service(to_ghost), "metadata": {"name": "ghost", "namespace": k.NAMESPACE}}
    codes = {m["code"] for m in (await call(client.analyze, [ghost]))["messages"]}
    assert "MK0103" in codes

    # an object that bypassed the admission webhook does not load: the finding names it
    broken = k.as_served({**copy.deepcopy(documents()[0]),
                          "metadata": {"name": "broken", "namespace": "bookinfo"}})
    broken["spec"]["trafficPolicy"] = {"loadBalancer": {"simple": "FASTEST"}}
    async with session.post(str(kmock.url).rstrip("/") + k.istio_path(broken), json=broken) as response:
        assert response.status in (200, 201)
    answer = await call(client.analyze)
    [finding] = [m for m in answer["messages"] if m["resource"] == "DestinationRule/bookinfo/broken"]
    assert finding["field"] == "spec.trafficPolicy.loadBalancer.simple"


async def test_without_a_control_plane_writes_still_land_and_reads_say_why(
        kmock: Any, session: aiohttp.ClientSession) -> None:
    prepare(kmock)
    client = cluster_client(f"k8s:{str(kmock.url).rstrip('/')}", mirror_wait_s=0.5)
    answer = await call(client.apply, documents()[:1])
    assert answer["results"] == [{"resource": "DestinationRule/bookinfo/reviews", "action": "created"}]
    assert answer["revision"] == 0
    assert "control plane could not be asked" in answer["warnings"][0]["message"]
    assert len(await objects(session, kmock, DR_COLLECTION)) == 1
    with pytest.raises(ControlUnreachable) as unreachable:
        await call(client.proxy_status)
    assert "could not reach the service meshkit-system/meshkit-control" in unreachable.value.reason


async def test_a_cluster_without_the_crds_says_so(kmock: Any) -> None:
    kmock.resources.load_bundled()  # Kubernetes' own kinds only: no Istio CRDs
    client = cluster_client(f"k8s:{str(kmock.url).rstrip('/')}", mirror_wait_s=0.5)
    for call_args in ((client.apply, documents()), (client.get, "vs"), (client.analyze,)):
        with pytest.raises(ApiError) as missing:
            await call(*call_args)
        assert missing.value.status == 404
        assert "meshkit's CRDs are not installed" in missing.value.error, call_args[0]


async def test_control_plane_mirror_wait_is_bounded_and_says_so(
        kmock: Any, session: aiohttp.ClientSession, plane: RunningKubernetesControlPlane) -> None:
    await plane.sync.close()  # the control plane stops following the cluster
    client = cluster_client(f"k8s:{str(kmock.url).rstrip('/')}", mirror_wait_s=0.5)
    answer = await call(client.apply, documents()[:1])
    assert answer["changed"] is True
    assert "had not mirrored it within 0.5 s" in answer["warnings"][0]["message"]


def test_merge_patch_turns_the_old_document_into_the_new() -> None:
    old = {"hosts": ["a"], "http": [{"x": 1}], "gone": {"deep": 1}, "same": {"k": 1, "drop": 2}}
    new = {"hosts": ["a", "b"], "http": [{"x": 1}], "same": {"k": 1}, "added": True}
    patch = merge_patch(old, new)
    assert patch == {"gone": None, "hosts": ["a", "b"], "same": {"drop": None}, "added": True}


async def test_until_helper_is_bounded() -> None:  # the harness's wait fails instead of hanging
    with pytest.raises(pytest.fail.Exception):
        await until("never", lambda: False, 0.2)


NETPOL_COLLECTION = "/apis/networking.k8s.io/v1/networkpolicies"


async def test_a_network_policy_is_written_as_kubernetes_own_kind(
        client: ClusterClient, kmock: Any, session: aiohttp.ClientSession) -> None:
    """istio.io's "Egress Gateways" NetworkPolicy: the cluster's CNI enforces it, so the client writes it as
    it is and does not wait for the control plane (which does not mirror it)."""
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "allow-egress-to-istio-system-and-kube-dns", "namespace": k.NAMESPACE},
              "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"istio": "system"}}}]}]}}
    answer = await call(client.apply, [policy])
    assert answer["changed"] is True and answer["warnings"] == [], answer
    assert answer["results"] == [{"resource": f"NetworkPolicy/{k.NAMESPACE}/allow-egress-to-istio-system-and-"
                                              "kube-dns", "action": "created"}]
    [held] = await objects(session, kmock, NETPOL_COLLECTION)
    assert held["spec"] == policy["spec"]
    [listed] = (await call(client.get, "netpol", None, k.NAMESPACE))["items"]
    assert listed["resource"]["spec"] == policy["spec"]
    assert (await call(client.apply, [policy]))["changed"] is False
    deleted = await call(client.delete, "networkpolicy", "allow-egress-to-istio-system-and-kube-dns",
                         k.NAMESPACE)
    assert deleted["changed"] is True and await objects(session, kmock, NETPOL_COLLECTION) == []
