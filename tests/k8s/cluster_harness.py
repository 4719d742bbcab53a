"""A mesh "on Kubernetes" for the cluster-client tests: KMock, a control plane following it, its proxy.

KMock is the API server (Istio kinds registered as `operator_harness.prepare` does, a small
Bookinfo created). A real control plane with the Kubernetes backend (`run_kubernetes_control_plane`,
port 0, no CA) follows it. KMock has no service proxy of its own, so `serve_control_proxy`
teaches it the one route the clients use — ``/api/v1/namespaces/meshkit-system/services/
meshkit-control:http-control/proxy/<path>`` — by forwarding each request to that control plane,
as the API server forwards to the Service's pod. Nothing of meshkit is mocked.

The clients under test are synchronous (urllib) while KMock and the control plane run on the
test's event loop: tests call them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock as kmocklib
import yaml

from meshkit.k8s.api import KubeAccess
from meshkit.k8s.control_plane import (
    RunningKubernetesControlPlane,
    SyncOptions,
    run_kubernetes_control_plane,
)
from tests.k8s import kube_objects as k
from tests.k8s.operator_harness import prepare

WAIT_S = 15.0
PROXY_PATH = "/api/v1/namespaces/meshkit-system/services/meshkit-control:http-control/proxy"
_PROXIED = re.compile("^" + re.escape(PROXY_PATH) + "(/.*)$")


def serve_control_proxy(kmock: Any, session: aiohttp.ClientSession, control_url: str,
                        seen: list[str] | None = None) -> None:
    """Forward KMock's service-proxy route to the control plane at ``control_url``."""

    async def forward(request: kmocklib.Request) -> kmocklib.Response:
        match = _PROXIED.match(request.url.path)
        assert match is not None
        if seen is not None:
            seen.append(f"{request.method.value} {match.group(1)}")
        # as the API server's proxy: its own Authorization dropped, the other headers passed on
        passed = ("content-type", "x-meshkit-token")
        headers = {k: v for k, v in request.headers.items() if k.lower() in passed}
        async with session.request(request.method.value, control_url + match.group(1), params=request.params,
                                   data=request.body or None, headers=headers) as answer:
            body = await answer.read()
            return kmocklib.Response(status=answer.status, payload=body,
                                     headers={"Content-Type": answer.headers.get("Content-Type", "")})

    kmock[_PROXIED] << forward


async def start_cluster(kmock: Any, session: aiohttp.ClientSession, state_dir: Path, *,
                        bookinfo_config: bool = False) -> RunningKubernetesControlPlane:
    """Bookinfo's workloads in KMock (and its Istio objects when asked), a control plane following it."""
    prepare(kmock)
    cluster = k.Cluster(session, str(kmock.url))
    for name in k.services():
        await cluster.request("POST", f"/api/v1/namespaces/{k.NAMESPACE}/services", k.service(name))
    for workload in k.WORKLOADS:
        await cluster.request("POST", f"/api/v1/namespaces/{k.NAMESPACE}/pods", k.pod(workload))
    for name in k.services():
        entries = [k.slice_entry(w) for w in k.WORKLOADS if w.service == name]
        await cluster.request("POST", f"/apis/discovery.k8s.io/v1/namespaces/{k.NAMESPACE}/endpointslices",
                              k.endpoint_slice(name, entries))
    if bookinfo_config:
        for document in k.istio_documents():
            await cluster.request("POST", k.istio_path(document), k.as_served(document))
    running = await run_kubernetes_control_plane(
        KubeAccess.url(str(kmock.url)), port=0, state_dir=state_dir, record_address=False, with_ca=False,
        sync_options=SyncOptions(debounce_s=0.01, max_backoff_s=0.5))
    try:
        assert await running.sync.wait_synced(WAIT_S), f"not synced: {running.sync.stats}"
    except BaseException:
        await running.close()
        raise
    serve_control_proxy(kmock, session, running.url)
    return running


async def objects(session: aiohttp.ClientSession, kmock: Any, plural_path: str) -> list[dict[str, Any]]:
    """The objects KMock holds at a collection path (``/apis/networking.istio.io/v1/virtualservices``)."""
    async with session.get(str(kmock.url).rstrip("/") + plural_path) as response:
        assert response.status == 200, await response.text()
        return list((await response.json())["items"])


async def running_cluster(kmock: Any, session: aiohttp.ClientSession, state_dir: Path,
                          **options: Any) -> AsyncIterator[RunningKubernetesControlPlane]:
    running = await start_cluster(kmock, session, state_dir, **options)
    try:
        yield running
    finally:
        await running.close()


def write_kubeconfig(path: Path, server: str, *, user: dict[str, Any], cluster: dict[str, Any] | None = None,
                     context: str = "kind-meshkit", current: str | None = "kind-meshkit") -> Path:
    """A one-cluster kubeconfig at ``path``: ``server`` (with ``cluster``'s fields), ``user``'s
    credentials, one context named ``context``; ``current`` is its current-context."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
    }))
    return path
