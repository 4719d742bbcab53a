"""The analyzer in the validating webhook (KMock API server, the operator's real webhook server):
istioctl-level checks that Istio's own webhook refuses are refused with the analyzer's message and
Istio's code; those istioctl only reports are admitted with a warning (the order of ``kubectl apply``
must not matter); delegates are admitted."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import kmock as kmocklib
import pytest

from meshkit.k8s.inject import InjectSettings
from meshkit.k8s.operator import OperatorConfig, validate_handler_id
from tests.k8s.operator_harness import (
    MANAGED,
    Running,
    free_port,
    namespaces_parsed,
    running_operator,
    until,
)

VIRTUAL_SERVICES = ("networking.istio.io", "v1", "virtualservices")
DESTINATION_RULES = ("networking.istio.io", "v1", "destinationrules")
PEER_AUTHENTICATIONS = ("security.istio.io", "v1", "peerauthentications")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture()
async def operator(kmock: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    namespaces_parsed(monkeypatch)
    config = OperatorConfig(inject=InjectSettings(image="meshkit:test"), status_resync_s=0.5,
                            webhook_addr="127.0.0.1", webhook_port=free_port(), managed=MANAGED)
    async with running_operator(kmock, config) as running:
        yield running


def _object(kind: str, group: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{group}/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "bookinfo", "uid": str(uuid.uuid4()),
                         "resourceVersion": "1"},
            "spec": spec}


def _vs(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _object("VirtualService", "networking.istio.io", name, spec)


async def _review(operator: Running, resource: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
    return await operator.review(validate_handler_id(resource[2]), obj, resource, "bookinfo")


REVIEWS_V1 = {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}


async def test_what_istio_refuses_is_refused_with_istios_code(operator: Running) -> None:
    everything = _vs("everything", {"hosts": ["*"], "http": [REVIEWS_V1]})
    wildcard = await _review(operator, VIRTUAL_SERVICES, everything)
    assert wildcard["allowed"] is False
    assert wildcard["status"]["message"].startswith(
        "Error [MK0126] (VirtualService/bookinfo/everything spec.hosts[0]) wildcard host * is not allowed "
        "for virtual services bound to the mesh gateway")
    assert wildcard["status"]["message"].endswith("[IST0106]")

    claims = {"hosts": ["reviews"], "http": [{
        "match": [{"headers": {"@request.auth.claims.groups": {"exact": "group1"}}}], **REVIEWS_V1}]}
    refused = await _review(operator, VIRTUAL_SERVICES, _vs("claims", claims))
    assert refused["allowed"] is False and "[MK0120]" in refused["status"]["message"]
    message = refused["status"]["message"]
    assert "JWT claim based routing (key: groups) is only supported for gateway" in message

    bad_subset = _object("DestinationRule", "networking.istio.io", "reviews", {
        "host": "reviews", "trafficPolicy": {}, "subsets": [{"name": "V1", "labels": {"version": "v1"}}]})
    refused = await _review(operator, DESTINATION_RULES, bad_subset)
    assert refused["allowed"] is False
    lines = refused["status"]["message"].splitlines()
    assert [line.split("]")[0] for line in lines] == ["Error [MK0128", "Error [MK0129"]

    mesh_wide = _object("PeerAuthentication", "security.istio.io", "default", {
        "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}})
    refused = await _review(operator, PEER_AUTHENTICATIONS, mesh_wide)
    assert refused["allowed"] is False
    assert "[MK0130]" in refused["status"]["message"] and "portLevelMtls requires a workload selector" in \
        refused["status"]["message"]
    selected = {**mesh_wide, "spec": {**mesh_wide["spec"], "selector": {"matchLabels": {"app": "reviews"}}}}
    assert (await _review(operator, PEER_AUTHENTICATIONS, selected))["allowed"] is True


async def test_what_istioctl_only_reports_is_admitted_with_a_warning(operator: Running) -> None:
    unreachable = {"hosts": ["reviews"], "http": [REVIEWS_V1, {
        "match": [{"headers": {"end-user": {"exact": "jason"}}}],
        "route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]}
    response = await _review(operator, VIRTUAL_SERVICES, _vs("reviews", unreachable))
    assert response["allowed"] is True
    assert response["warnings"] == [
        "Warning [MK0124] (VirtualService/bookinfo/reviews spec.http[1]) VirtualService rule #1 not used "
        "(route without matches defined before). [IST0130]"]
    ordered = {**unreachable, "http": list(reversed(unreachable["http"]))}
    response = await _review(operator, VIRTUAL_SERVICES, _vs("reviews", ordered))
    assert response["allowed"] is True and not response.get("warnings")


async def test_delegates_are_admitted(operator: Running) -> None:
    root = {"hosts": ["reviews"], "http": [
        {"match": [{"uri": {"prefix": "/reviews"}}], "delegate": {"name": "reviews-delegate"}}, REVIEWS_V1]}
    delegate = {"http": [REVIEWS_V1]}  # no hosts: a delegate
    response = await _review(operator, VIRTUAL_SERVICES, _vs("reviews-delegate", delegate))
    assert response["allowed"] is True and not response.get("warnings")
    response = await _review(operator, VIRTUAL_SERVICES, _vs("root", root))
    assert response["allowed"] is True  # its delegate is judged with the others, in its status
    misused = _vs("reviews-delegate", {**delegate, "gateways": ["bookinfo-gateway"]})
    refused = await _review(operator, VIRTUAL_SERVICES, misused)
    assert refused["allowed"] is False and "[MK0138]" in refused["status"]["message"]


async def test_the_status_judges_a_root_with_the_other_virtual_services(operator: Running) -> None:
    """Cross-resource findings are the status's: a delegate that is missing, then applied."""
    collection = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices"
    root = _vs("root", {"hosts": ["reviews"], "http": [
        {"match": [{"uri": {"prefix": "/reviews"}}], "delegate": {"name": "reviews-delegate"}}, REVIEWS_V1]})
    await operator.create(collection, root)
    key = (kmocklib.resource(*VIRTUAL_SERVICES), "bookinfo", "root")

    def codes() -> tuple[set[str]] | None:  # a one-element tuple: truthy even when no code is left
        status = operator.kmock.objects[key].get("status") if key in operator.kmock.objects else None
        return ({m["code"] for m in status["validationMessages"]},) if status else None

    (first,) = await until("status on VirtualService/bookinfo/root", codes)
    assert "MK0137" in first  # Referenced delegate virtual service not found (IST0101)
    await operator.create(collection, _vs("reviews-delegate", {"http": [REVIEWS_V1]}))

    def without_missing_delegate() -> tuple[set[str]] | None:
        found = codes()
        return found if found is not None and "MK0137" not in found[0] else None

    (healed,) = await until("the root's status without MK0137", without_missing_delegate)
    assert "MK0137" not in healed
