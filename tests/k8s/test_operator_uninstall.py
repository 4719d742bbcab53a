"""Uninstall in any order: no Istio object waits for the operator to be deleted.

KMock honours finalizers as the API server does (a DELETE of an object with finalizers only
sets ``deletionTimestamp``). With the per-object ``kopf.timer`` the operator had, every Istio
object carried kopf's finalizer, and deleting one after the operator was gone left it
hanging: `test_objects_delete_after_the_operator_is_gone` failed on that. The resync is now one
task of the operator (`meshkit.k8s.status_resync`), so nothing of the operator stays on them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from meshkit.k8s.inject import InjectSettings
from meshkit.k8s.operator import OperatorConfig
from tests.k8s.operator_harness import MANAGED, free_port, namespaces_parsed, running_operator, until

pytestmark = pytest.mark.timeout(90)

VS = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices"
DR = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules"


def _virtual_service() -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "bookinfo", "generation": 1},
            "spec": {"hosts": ["reviews"],
                     "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]}}


def _destination_rule() -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "bookinfo", "generation": 1},
            "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}


def _stored(kmock: Any, plural: str, name: str) -> dict[str, Any] | None:
    for (resource, namespace, object_name), obj in list(kmock.objects.items()):
        if resource.plural == plural and (namespace, object_name) == ("bookinfo", name):
            return dict(obj)
    return None


def _ready(kmock: Any, plural: str) -> str | None:
    obj = _stored(kmock, plural, "reviews") or {}
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("status"))
    return None


@pytest.fixture()
def config() -> OperatorConfig:
    return OperatorConfig(inject=InjectSettings(image="meshkit:test"), status_resync_s=0.3,
                          webhook_addr="127.0.0.1", webhook_port=free_port(), managed=MANAGED)


@pytest.fixture()
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        yield client


async def _delete(session: aiohttp.ClientSession, kmock: Any, path: str) -> None:
    async with session.delete(f"{str(kmock.url).rstrip('/')}{path}") as response:
        assert response.status in (200, 202), await response.text()


async def _gone(session: aiohttp.ClientSession, kmock: Any, path: str) -> bool:
    """Whether the API answers 404 for ``path`` (an object held by a finalizer still answers 200)."""
    async with session.get(f"{str(kmock.url).rstrip('/')}{path}") as response:
        return response.status == 404


async def _served_and_resynced(kmock: Any) -> None:
    """Both objects handled, and the VirtualService turned Ready by the resync (its DR came later)."""
    await until("the VirtualService's status", lambda: _ready(kmock, "virtualservices") == "True")
    await until("the DestinationRule's status", lambda: _ready(kmock, "destinationrules") == "True")


async def test_objects_delete_after_the_operator_is_gone(kmock: Any, monkeypatch: pytest.MonkeyPatch,
                                                         config: OperatorConfig,
                                                         session: aiohttp.ClientSession) -> None:
    namespaces_parsed(monkeypatch)
    async with running_operator(kmock, config) as running:
        await running.create(VS, _virtual_service())
        await until("the VirtualService's first status", lambda: _ready(kmock, "virtualservices") == "False")
        await running.create(DR, _destination_rule())
        await _served_and_resynced(kmock)
        for plural in ("virtualservices", "destinationrules"):
            stored = _stored(kmock, plural, "reviews") or {}
            assert not (stored.get("metadata") or {}).get("finalizers"), stored["metadata"]
    # the operator is gone (uninstalled first): the objects still delete at once
    await _delete(session, kmock, f"{VS}/reviews")
    await _delete(session, kmock, f"{DR}/reviews")
    assert await _gone(session, kmock, f"{VS}/reviews")
    assert await _gone(session, kmock, f"{DR}/reviews")


async def test_objects_delete_while_the_operator_runs(kmock: Any, monkeypatch: pytest.MonkeyPatch,
                                                      config: OperatorConfig,
                                                      session: aiohttp.ClientSession) -> None:
    namespaces_parsed(monkeypatch)
    async with running_operator(kmock, config) as running:
        await running.create(VS, _virtual_service())
        await running.create(DR, _destination_rule())
        await _served_and_resynced(kmock)
        await _delete(session, kmock, f"{DR}/reviews")
        assert await _gone(session, kmock, f"{DR}/reviews")
        # the resync sees the DestinationRule gone: the VirtualService's subset is unknown again
        await until("the resync after the delete", lambda: _ready(kmock, "virtualservices") == "False")
        await _delete(session, kmock, f"{VS}/reviews")
        assert await _gone(session, kmock, f"{VS}/reviews")
