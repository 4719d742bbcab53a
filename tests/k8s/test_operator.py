"""The operator for real against KMock (a Kubernetes API mock server made for kopf).

Follows TESTING-NOTES: bundled resources loaded first, the Istio kinds registered with
list/watch/patch verbs and a status subresource, objects created only once the operator's
watches are up, AdmissionReviews sent by the test to the URL kopf wrote into the managed
webhook configuration (KMock never calls webhooks), and the operator stopped before the
KMock fixture ends (`tests/k8s/operator_harness.py`). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import kmock as kmocklib
import pytest

from meshkit.k8s import names
from meshkit.k8s.inject import InjectSettings
from meshkit.k8s.operator import INJECT_HANDLER, OperatorConfig, validate_handler_id
from tests.k8s.operator_harness import (
    MANAGED,
    WAIT_S,
    Running,
    free_port,
    namespaces_parsed,
    running_operator,
    until,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture()
async def operator(kmock: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    namespaces_parsed(monkeypatch)
    config = OperatorConfig(inject=InjectSettings(image="meshkit:test"), status_resync_s=0.5,
                            webhook_addr="127.0.0.1", webhook_port=free_port(), managed=MANAGED)
    async with running_operator(kmock, config) as running:
        yield running


def _namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def _pod(name: str) -> dict[str, Any]:
    # as the API server sends it for a Deployment's pod: no metadata.namespace, the review carries it
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "details", "version": "v1"}},
            "spec": {"serviceAccountName": "bookinfo-details",
                     "containers": [{"name": "details", "image": "meshkit:test",
                                     "ports": [{"containerPort": 9080}]}]}}


def _patch_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    return list(json.loads(base64.b64decode(response["patch"])))


async def test_a_pod_of_an_unseen_namespace_is_refused_not_admitted_bare(operator: Running) -> None:
    """Kopf-managed webhooks select every pod: before the operator has seen the pod's namespace
    (just after a restart) it cannot know the label, so it refuses (the ReplicaSet retries)
    instead of admitting a pod without its sidecar. It used to answer allowed, with no patch."""
    response = await operator.review(INJECT_HANDLER, _pod("details-v1-z"), ("", "v1", "pods"), "unseen")
    assert response["allowed"] is False
    assert response["status"]["code"] == 503
    assert "namespace 'unseen' is not known to the operator yet" in response["status"]["message"]


async def test_pod_in_labelled_namespace_is_injected_and_unlabelled_is_not(operator: Running) -> None:
    await operator.create("/api/v1/namespaces", _namespace("plain", {}))
    await operator.create("/api/v1/namespaces", _namespace("bookinfo", {names.INJECTION_LABEL: "enabled"}))
    pods = ("", "v1", "pods")

    # the namespace index follows the watch: until the operator has seen "bookinfo", it refuses
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        response = await operator.review(INJECT_HANDLER, _pod("details-v1-a"), pods, "bookinfo")
        ops = _patch_of(response)
        assert response["allowed"] is True or "not known to the operator yet" in response["status"]["message"]
        if ops or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    containers = [op["value"]["name"] for op in ops if op["path"].startswith("/spec/containers")]
    assert containers == [names.SIDECAR_CONTAINER], ops
    init = next(op for op in ops if op["path"].startswith("/spec/initContainers"))
    assert init["value"][0]["name"] == names.INIT_CONTAINER
    assert any(names.STATUS_ANNOTATION.replace("/", "~1") in op["path"] or
               names.STATUS_ANNOTATION in json.dumps(op.get("value")) for op in ops)

    # "plain" was created before "bookinfo", so the operator has seen it by now: no injection
    response = await operator.review(INJECT_HANDLER, _pod("details-v1-b"), pods, "plain")
    assert response["allowed"] is True
    assert _patch_of(response) == []

    # ... unless the pod asks for it
    opted_in = _pod("details-v1-c")
    opted_in["metadata"]["labels"][names.INJECT_OVERRIDE_LABEL] = "true"
    response = await operator.review(INJECT_HANDLER, opted_in, pods, "plain")
    assert any(op["path"].startswith("/spec/containers") for op in _patch_of(response))


def _virtual_service(name: str, weights: tuple[int, int]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "bookinfo", "generation": 3,
                     "uid": str(uuid.uuid4()), "resourceVersion": "7"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": weights[0]},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": weights[1]},
        ]}]},
    }


async def test_proxy_config_concurrency_is_injected_and_a_bad_one_refused(operator: Running) -> None:
    """``proxy.istio.io/config`` ``concurrency`` on the pod: the sidecar gets ``--concurrency``; a bad
    value refuses the pod with a 400 naming the annotation (never injected without it)."""
    await operator.create("/api/v1/namespaces", _namespace("conc", {names.INJECTION_LABEL: "enabled"}))
    pods = ("", "v1", "pods")
    good, bad = _pod("details-v1-c"), _pod("details-v1-d")
    good["metadata"]["annotations"] = {"proxy.istio.io/config": '{"concurrency": 2}'}
    bad["metadata"]["annotations"] = {"proxy.istio.io/config": '{"concurrency": -3}'}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:  # until the operator has seen the namespace
        response = await operator.review(INJECT_HANDLER, good, pods, "conc")
        ops = _patch_of(response)
        if ops or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    (sidecar,) = [op["value"] for op in ops if op["path"].startswith("/spec/containers")]
    assert sidecar["args"][sidecar["args"].index("--concurrency") + 1] == "2"
    response = await operator.review(INJECT_HANDLER, bad, pods, "conc")
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert "proxy.istio.io/config: concurrency: expected a whole number" in response["status"]["message"]


async def test_bad_virtual_service_is_rejected_with_the_analyzer_message(operator: Running) -> None:
    resource = ("networking.istio.io", "v1", "virtualservices")
    handler = validate_handler_id("virtualservices")
    response = await operator.review(handler, _virtual_service("reviews", (0, 0)), resource, "bookinfo")
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert message == "Error [MK0102] (VirtualService/bookinfo/reviews spec.http[0].route) " \
                      "route weights sum to 0: no destination would receive traffic " \
                      "(Istio: total destination weight = 0) [IST0106]"
    assert response["status"]["code"] == 400

    # a valid one passes; the subsets it names may come later (a status matter, not a rejection)
    response = await operator.review(handler, _virtual_service("reviews", (50, 50)), resource, "bookinfo")
    assert response["allowed"] is True

    # a field meshkit does not implement is rejected with the loader's message
    unsupported = _virtual_service("reviews", (50, 50))
    unsupported["spec"]["http"][0]["corsPolicy"] = {"allowOrigins": [{"exact": "https://example.com"}]}
    response = await operator.review(handler, unsupported, resource, "bookinfo")
    assert response["allowed"] is False
    assert "spec.http[0].corsPolicy is not supported by meshkit" in response["status"]["message"]

    # an UPDATE that changes the spec is checked like a CREATE ...
    good = _virtual_service("reviews", (50, 50))
    response = await operator.review(handler, _virtual_service("reviews", (0, 0)), resource, "bookinfo",
                                     operation="UPDATE", old=good)
    assert response["allowed"] is False
    # ... one that leaves the spec alone (labels, the operator's own annotations) is not blocked,
    # even on an object that predates the webhook and would not pass it
    legacy = _virtual_service("reviews", (0, 0))
    relabelled = {**legacy, "metadata": {**legacy["metadata"], "labels": {"team": "books"}}}
    response = await operator.review(handler, relabelled, resource, "bookinfo",
                                     operation="UPDATE", old=legacy)
    assert response["allowed"] is True


async def test_status_is_written(operator: Running) -> None:
    resource = kmocklib.resource("networking.istio.io", "v1", "virtualservices")
    await operator.create("/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices",
                          _virtual_service("reviews", (50, 50)))
    key = (resource, "bookinfo", "reviews")

    def status() -> dict[str, Any] | None:
        if key not in operator.kmock.objects:
            return None
        return operator.kmock.objects[key].get("status")

    first = await until("status on VirtualService/bookinfo/reviews", status)
    assert first["observedGeneration"] == 3
    ready = first["conditions"][0]
    assert (ready["type"], ready["status"]) == ("Ready", "False")  # no DestinationRule defines v1/v2 yet
    assert {m["code"] for m in first["validationMessages"]} == {"MK0101"}

    rule = {
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "bookinfo", "generation": 1},
        "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                {"name": "v2", "labels": {"version": "v2"}}]},
    }
    await operator.create("/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules", rule)
    rule_key = (kmocklib.resource("networking.istio.io", "v1", "destinationrules"), "bookinfo", "reviews")

    def rule_status() -> dict[str, Any] | None:
        if rule_key not in operator.kmock.objects:
            return None
        return operator.kmock.objects[rule_key].get("status")

    accepted = await until("status on DestinationRule/bookinfo/reviews", rule_status)
    assert accepted["conditions"][0]["status"] == "True"
    assert accepted["validationMessages"] == []

    # the VirtualService did not change, but the resync sees the subsets now exist
    def ready_again() -> dict[str, Any] | None:
        current = status()
        return current if current and current["conditions"][0]["status"] == "True" else None

    healed = await until("VirtualService/bookinfo/reviews Ready after its DestinationRule", ready_again)
    assert healed["validationMessages"] == []
    assert healed["conditions"][0]["lastTransitionTime"] >= first["conditions"][0]["lastTransitionTime"]

    # with nothing changing, the resync (every 0.5 s here) writes nothing
    def status_patches() -> int:
        return sum(1 for r in list(operator.kmock) if r.method == "PATCH" and r.name == "reviews"
                   and r.resource is not None and r.resource.plural == "virtualservices"
                   and r.subresource == "status")

    before = status_patches()
    assert before >= 2  # the first status and the healed one
    await asyncio.sleep(1.6)
    assert status_patches() == before


async def test_status_of_an_object_that_bypassed_the_webhook(operator: Running) -> None:
    """An object stored before the webhook existed (KMock calls no webhooks) gets the loader's verdict."""
    legacy = _virtual_service("legacy", (100, 0))
    legacy["spec"]["http"][0]["corsPolicy"] = {"allowOrigins": [{"exact": "https://example.com"}]}
    await operator.create("/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices", legacy)
    key = (kmocklib.resource("networking.istio.io", "v1", "virtualservices"), "bookinfo", "legacy")

    def status() -> dict[str, Any] | None:
        return operator.kmock.objects[key].get("status") if key in operator.kmock.objects else None

    written = await until("status on VirtualService/bookinfo/legacy", status)
    assert written["conditions"][0]["status"] == "False"
    found = [(m["code"], m["field"]) for m in written["validationMessages"]]
    assert found == [("MK0004", "spec.http[0].corsPolicy")]
