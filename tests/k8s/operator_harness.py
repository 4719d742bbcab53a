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
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock as kmocklib
import kopf
import pytest
import yaml
from kmock._internal import parsing

from meshkit.config.api_kinds import GATEWAY_API_GROUP, OPERATOR, ROLES, config_kinds, istio_kinds
from meshkit.k8s.operator import OperatorConfig, build_registry
from meshkit.k8s.rbac_rules import api_request, authorized, namespaced_rules, role_rules

MANAGED = "meshkit-test"
# every Istio kind the operator watches (the same list its RBAC rules come from)
ISTIO_KINDS = [(kind.group, kind.version, kind.plural, kind.kind) for kind in istio_kinds()]
# the Gateway API kinds meshkit mirrors, as their standard-channel CRDs serve them (GatewayClass is
# cluster-scoped)
GATEWAY_API_KINDS = [(kind.group, kind.version, kind.plural, kind.kind, kind.namespaced)
                     for kind in config_kinds() if kind.group == GATEWAY_API_GROUP]
WAIT_S = 20.0
RBAC_MANIFEST = Path(__file__).resolve().parents[2] / "operator" / "deploy" / "base" / "rbac.yaml"
# kopf-managed webhook configurations (``--managed``, development and these tests) are written by
# the operator itself: a grant the cluster install (static configurations) does not have
MANAGED_MODE_RULES = [
    {"apiGroups": ["admissionregistration.k8s.io"],
     "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
     "verbs": ["create", "get", "list", "watch", "patch"]},
]


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
class Rbac:
    """What the RBAC check in front of KMock saw: each request of a meshkit identity, the refused ones."""

    seen: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def enforce_rbac(kmock: Any, manifest: Path = RBAC_MANIFEST,
                 extra: dict[str, list[dict[str, Any]]] | None = None) -> Rbac:
    """Make KMock authorize as the API server's RBAC would, from the committed ClusterRoles.

    A request carrying ``Authorization: Bearer <role>`` (``meshkit-operator``, ``meshkit-control``)
    is evaluated against that ClusterRole and its Roles (`meshkit.k8s.rbac_rules.authorized`) and answered 403
    Forbidden when it is not allowed; requests without a token (the test's own set-up) pass.
    """
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    rules = {role: [*role_rules(docs, role), *(extra or {}).get(role, [])] for role in ROLES}
    in_namespace = {role: namespaced_rules(docs, role) for role in ROLES}
    rbac = Rbac()

    def refused(request: kmocklib.Request) -> bool:
        role = next((r for r in ROLES if request.headers.get("Authorization") == f"Bearer {r}"), None)
        if role is None:
            return False
        attributes = api_request(request.method.value, request.url.path, dict(request.params))
        line = f"{role}: {attributes}"
        if line not in rbac.seen:
            rbac.seen.append(line)
        if authorized(rules[role], in_namespace[role], attributes):
            return False
        if line not in rbac.refused:
            rbac.refused.append(line)
        return True

    def forbidden(request: kmocklib.Request) -> kmocklib.Response:
        attributes = api_request(request.method.value, request.url.path, dict(request.params))
        who = request.headers.get("Authorization", "")[len("Bearer "):]
        status = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Forbidden",
                  "code": 403, "message": f"forbidden: {who} cannot {attributes}"}
        return kmocklib.Response(status=403, payload=status)

    kmock[refused] << forbidden
    return rbac


@dataclass
class Running:
    kmock: Any
    session: aiohttp.ClientSession
    rbac: Rbac = field(default_factory=Rbac)

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
        """POST ``obj``, with a ``metadata.uid`` as the API server gives every object (KMock gives none,
        and kopf's indices key objects by namespace, name and uid: without one, a VirtualService and
        a DestinationRule of the same name would replace each other in the operator's indices)."""
        obj = {**obj, "metadata": {"uid": str(uuid.uuid4()), **(obj.get("metadata") or {})}}
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
    """Bundled Kubernetes resources plus the Istio and Gateway API kinds (list/watch/patch, status
    subresource)."""
    kmock.resources.load_bundled()
    for group, version, plural, kind in ISTIO_KINDS:
        kmock.resources[f"{group}/{version}/{plural}"] = kmocklib.ResourceInfo(
            kind=kind, namespaced=True, verbs={"list", "watch", "patch", "get", "create", "update"},
            subresources={"status"},
        )
    for group, version, plural, kind, namespaced in GATEWAY_API_KINDS:
        kmock.resources[f"{group}/{version}/{plural}"] = kmocklib.ResourceInfo(
            kind=kind, namespaced=namespaced, verbs={"list", "watch", "patch", "get", "create", "update"},
            subresources={"status"},
        )


def watching_everything(kmock: Any) -> bool:
    return all(_watching(kmock, plural) for plural in ("namespaces", *(kind[2] for kind in ISTIO_KINDS)))


@contextlib.asynccontextmanager
async def running_operator(kmock: Any, config: OperatorConfig,
                           manifest: Path = RBAC_MANIFEST,
                           unwatched: frozenset[str] = frozenset()) -> AsyncIterator[Running]:
    """The operator running against ``kmock`` with ``config``, its watches up; stopped on exit.

    It authenticates as ``meshkit-operator`` and KMock authorizes it with the committed
    ClusterRole (`enforce_rbac`; plus the managed-webhook grant when ``config.managed``).
    """
    prepare(kmock)
    rbac = enforce_rbac(kmock, manifest, {OPERATOR: MANAGED_MODE_RULES} if config.managed else None)
    registry = build_registry(config)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(kmock.url).rstrip("/"), insecure=True, scheme="Bearer",
                                   token=OPERATOR)

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(
        registry=registry, clusterwide=True, standalone=True, stop_flag=stop, ready_flag=ready,
    ))
    try:
        await asyncio.wait_for(ready.wait(), WAIT_S)
        for plural in ("namespaces", *(kind[2] for kind in ISTIO_KINDS if kind[2] not in unwatched)):
            await until(f"the operator watching {plural}", lambda p=plural: _watching(kmock, p))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            yield Running(kmock, session, rbac)
    finally:
        # graceful stop first; then cut kopf's 5 s wait for "hung" tasks, which in-process are
        # KMock's own streaming handlers (kopf counts every task created after its start as its own)
        stop.set()
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT_S)
        await _finish_kopf_tasks()


def _is_kopf(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and "/kopf/" in code.co_filename


async def _finish_kopf_tasks(within_s: float = 10.0) -> None:
    """Cancel the tasks kopf left running after its operator task ended, until they end: a watcher
    retrying a refused list was seen outliving it (1 run in 3 of the missing-rule test), and the
    event loop's own teardown then waited for it forever (pytest-timeout's 90 s)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        left = [t for t in asyncio.all_tasks() if not t.done() and _is_kopf(t)]
        if not left:
            return
        for lingering in left:
            lingering.cancel()
        await asyncio.wait(left, timeout=0.2)


