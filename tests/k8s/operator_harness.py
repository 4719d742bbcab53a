"""Running the meshkit operator in-process against KMock, for the tests in this folder.

`running_operator` starts kopf with meshkit's registry against a KMock server prepared as
TESTING-NOTES says (bundled resources, the Istio kinds with list/watch/patch and a status
subresource), waits until the watches are up, and stops the operator before KMock goes.

KMock 0.8 cannot parse the paths of the cluster-scoped ``namespaces`` resource
(``/api/v1/namespaces[/NAME]`` is read as a namespace prefix and answers 500), which the
operator's namespace-label index needs; `namespaces_parsed` fixes that one parse in the
mock server while a test runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import kmock as kmocklib
import kopf
import pytest
from kmock._internal import parsing

from meshkit.k8s.operator import OperatorConfig, build_registry

MANAGED = "meshkit-test"
ISTIO_KINDS = [
    ("networking.istio.io", "v1", "virtualservices", "VirtualService"),
    ("networking.istio.io", "v1", "destinationrules", "DestinationRule"),
    ("security.istio.io", "v1", "peerauthentications", "PeerAuthentication"),
    ("security.istio.io", "v1", "authorizationpolicies", "AuthorizationPolicy"),
    ("security.istio.io", "v1", "requestauthentications", "RequestAuthentication"),
]
WAIT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(what: str, probe: Callable[[], Any], within_s: float = WAIT_S) -> Any:
    """Poll ``probe`` every 50 ms until it returns something truthy; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        result = probe()
        if result:
            return result
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {within_s:.0f} s waiting for {what}")


@dataclass
class Running:
    kmock: Any
    session: aiohttp.ClientSession

    def webhook_urls(self) -> dict[str, str]:
        """handler id -> URL, from the webhook configurations kopf manages in KMock."""
        urls: dict[str, str] = {}
        for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            resource = kmocklib.resource("admissionregistration.k8s.io", "v1", plural)
            key = (resource, None, MANAGED)
            if key in self.kmock.objects:
                for hook in self.kmock.objects[key].get("webhooks") or []:
                    url = hook["clientConfig"]["url"]
                    urls[url.rsplit("/", 1)[-1]] = url
        return urls

    async def create(self, path: str, obj: dict[str, Any]) -> None:
        async with self.session.post(f"{self.kmock.url}{path}", json=obj) as response:
            assert response.status in (200, 201), await response.text()

    async def review(self, handler_id: str, obj: dict[str, Any], resource: tuple[str, str, str],
                     namespace: str, *, operation: str = "CREATE",
                     old: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send an AdmissionReview to the URL kopf put into the managed configuration."""
        url = (await until(f"webhook {handler_id} in the managed configuration",
                           lambda: self.webhook_urls().get(handler_id)))
        review = admission_review(obj, resource, namespace, operation=operation, old=old)
        return await self.post_review(url, review)

    async def post_review(self, url: str, review: dict[str, Any], ssl: Any = True) -> dict[str, Any]:
        async with self.session.post(url, json=review, ssl=ssl) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        assert answer["response"]["uid"] == review["request"]["uid"]
        return dict(answer["response"])


def admission_review(obj: dict[str, Any], resource: tuple[str, str, str], namespace: str, *,
                     operation: str = "CREATE", old: dict[str, Any] | None = None) -> dict[str, Any]:
    """An AdmissionReview (admission.k8s.io/v1) as the API server sends it."""
    group, version, plural = resource
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": obj.get("kind", "")},
            "resource": {"group": group, "version": version, "resource": plural},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
            "object": obj,
            "oldObject": old,
            "dryRun": False,
        },
    }


def _watching(kmock: Any, plural: str) -> bool:
    return any(r.action == kmocklib.action.WATCH and r.resource is not None and r.resource.plural == plural
               for r in list(kmock))


def namespaces_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    original = parsing.parse_path

    def parse_path(path: str) -> parsing.ParsedPath:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and (len(parts) <= 4 or parts[4:] in (["status"],)):
            return parsing.ParsedPath(group="", version="v1", plural="namespaces", namespace=None,
                                      name=parts[3] if len(parts) > 3 else None,
                                      subresource=parts[4] if len(parts) > 4 else None)
        return original(path)

    monkeypatch.setattr(parsing, "parse_path", parse_path)


def prepare(kmock: Any) -> None:
    """Bundled Kubernetes resources plus the Istio kinds (list/watch/patch, status subresource)."""
    kmock.resources.load_bundled()
    for group, version, plural, kind in ISTIO_KINDS:
        kmock.resources[f"{group}/{version}/{plural}"] = kmocklib.ResourceInfo(
            kind=kind, namespaced=True, verbs={"list", "watch", "patch", "get", "create", "update"},
            subresources={"status"},
        )


def watching_everything(kmock: Any) -> bool:
    return all(_watching(kmock, plural) for plural in ("namespaces", *(kind[2] for kind in ISTIO_KINDS)))


@contextlib.asynccontextmanager
async def running_operator(kmock: Any, config: OperatorConfig) -> AsyncIterator[Running]:
    """The operator running against ``kmock`` with ``config``, its watches up; stopped on exit."""
    prepare(kmock)
    registry = build_registry(config)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(kmock.url).rstrip("/"), insecure=True)

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(
        registry=registry, clusterwide=True, standalone=True, stop_flag=stop, ready_flag=ready,
    ))
    try:
        await asyncio.wait_for(ready.wait(), WAIT_S)
        for plural in ("namespaces", *(kind[2] for kind in ISTIO_KINDS)):
            await until(f"the operator watching {plural}", lambda p=plural: _watching(kmock, p))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            yield Running(kmock, session)
    finally:
        # graceful stop first; then cut kopf's 5 s wait for "hung" tasks, which in-process are
        # KMock's own streaming handlers (kopf counts every task created after its start as its own)
        stop.set()
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT_S)


