"""``meshkit.connect("kind")`` and ``meshkit --context kind ...`` against KMock and a real control plane.

A kubeconfig written by the test names KMock as the cluster of context ``kind-meshkit`` (what
``meshkit kind up`` creates), with a bearer token, so the whole path is the real one: the
kubernetes package's loader, the credentials on every request, the Istio objects written into
KMock, the control plane (`tests.k8s.cluster_harness`) mirroring them and answering reads through
the API server's service proxy. The notebook API runs in a thread (it blocks; KMock and the control
plane serve on the test's loop); the CLI runs as real processes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.k8s.control_plane import RunningKubernetesControlPlane
from meshkit.lab.display import LabError
from meshkit.lab.mesh import Mesh, connect
from tests.k8s import kube_objects as k
from tests.k8s.cluster_harness import objects, write_kubeconfig
from tests.test_cli import cli_env, meshkit

pytestmark = pytest.mark.timeout(120)
TOKEN = "learner-token-0123"
VS_COLLECTION = "/apis/networking.istio.io/v1/virtualservices"


@pytest.fixture()
def kubeconfig(kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"), user={"token": TOKEN})
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def tokens_seen(kmock: Any) -> set[str | None]:
    """The credentials of the requests the (urllib) clients made; the harness's own carry none."""
    return {request.headers.get("Authorization") for request in list(kmock)
            if request.headers.get("User-Agent", "").startswith("Python-urllib")}


async def test_connect_kind_applies_through_the_kubernetes_api_and_reads_through_the_control_plane(
        kmock: Any, session: aiohttp.ClientSession, plane: RunningKubernetesControlPlane,
        kubeconfig: Path) -> None:
    mesh: Mesh = await asyncio.to_thread(connect, "kind")
    assert mesh.cluster == "kind-meshkit"

    result = await asyncio.to_thread(mesh.apply, k.ISTIO_YAML)
    assert [r["action"] for r in result.results] == ["created"] * 4
    assert result.revision == plane.control_plane.store.revision >= 1
    assert len(await objects(session, kmock, VS_COLLECTION)) == 1
    assert tokens_seen(kmock) == {f"Bearer {TOKEN}"}  # every request carried the kubeconfig's token

    rule = await asyncio.to_thread(mesh.get, "VirtualService", "reviews", "bookinfo")
    assert rule is not None and rule["spec"]["hosts"] == ["reviews"]
    assert await asyncio.to_thread(mesh.get, "VirtualService", "ratings", "bookinfo") is None
    assert await asyncio.to_thread(mesh.revision) == plane.control_plane.store.revision
    telemetry = await asyncio.to_thread(mesh.telemetry, 30.0)
    assert "edges" in telemetry
    assert await asyncio.to_thread(mesh.wait_synced, 1.0) is True  # no sidecar connected: nothing stale
    findings = await asyncio.to_thread(mesh.analyze)
    assert not [m for m in findings.messages if m.get("severity") == "Error"]

    with pytest.raises(LabError) as refused:
        await asyncio.to_thread(mesh.apply, k.BAD_WEIGHTS)
    assert "spec.http[0].route" in str(refused.value) and "MK0102" in str(refused.value)
    [held] = await objects(session, kmock, VS_COLLECTION)
    assert held["spec"] == k.istio_documents()[1]["spec"]  # the old rule stays

    with pytest.raises(LabError) as local_only:
        await asyncio.to_thread(mesh.kill, "reviews-v1-0")
    assert "on Kubernetes (kind-meshkit)" in str(local_only.value)
    assert "kubectl delete pod POD" in str(local_only.value)
    with pytest.raises(LabError) as rollback:
        await asyncio.to_thread(mesh.rollback, 1)
    assert "source of truth" in str(rollback.value) and "git" in str(rollback.value)

    deleted = await asyncio.to_thread(mesh.delete, kind="VirtualService", name="reviews",
                                      namespace="bookinfo")
    assert deleted.results == [{"resource": "VirtualService/bookinfo/reviews", "action": "deleted"}]
    assert await objects(session, kmock, VS_COLLECTION) == []


async def test_connect_names_the_contexts_when_the_cluster_is_unknown(kmock: Any, kubeconfig: Path) -> None:
    with pytest.raises(LabError) as unknown:
        await asyncio.to_thread(connect, "kind:other")
    text = str(unknown.value)
    assert "kind-other" in text and "meshkit kind up" in text and "contexts there: kind-meshkit" in text


async def test_connect_fails_at_once_when_the_control_plane_does_not_answer(
        kmock: Any, kubeconfig: Path) -> None:
    with pytest.raises(LabError) as unreachable:  # KMock runs, but no control plane is proxied to
        await asyncio.to_thread(connect, "k8s:kind-meshkit")
    assert "could not reach the service meshkit-system/meshkit-control" in str(unreachable.value)


async def test_cli_context_apply_get_delete_proxy_status_and_top(
        kmock: Any, session: aiohttp.ClientSession, plane: RunningKubernetesControlPlane,
        kubeconfig: Path, tmp_path: Path) -> None:
    env = {**cli_env(tmp_path / "home"), "KUBECONFIG": str(kubeconfig), "MESHKIT_CONTEXT": "kind"}
    rules = tmp_path / "bookinfo.yaml"
    rules.write_text(k.ISTIO_YAML)

    applied = await meshkit("apply", "-f", str(rules), env=env)
    assert applied.code == 0, applied.err
    assert "VirtualService/bookinfo/reviews created" in applied.out
    assert f"revision {plane.control_plane.store.revision}" in applied.out
    assert len(await objects(session, kmock, VS_COLLECTION)) == 1

    listed = await meshkit("get", "vs", "-n", "bookinfo", env=env)
    assert listed.code == 0, listed.err
    assert listed.out.split("\n")[0].split() == ["NAME", "HOSTS", "AGE"]
    assert listed.out.split("\n")[1].split()[:2] == ["reviews", '["reviews"]']

    bad = tmp_path / "bad.yaml"
    bad.write_text(k.BAD_WEIGHTS)
    refused = await meshkit("apply", "-f", str(bad), env=env)
    assert refused.code == 1
    # the resource, the field, then the file and line it starts at
    assert f"Error [MK0102] (VirtualService/bookinfo/reviews spec.http[0].route {bad}:" in refused.err

    analyzed = await meshkit("analyze", "-f", str(bad), env=env)  # with the cluster's objects
    assert analyzed.code == 79  # istioctl's "analyzers found issues"
    assert f"Error [MK0102] (VirtualService/bookinfo/reviews spec.http[0].route {bad}:" in analyzed.out

    status = await meshkit("proxy-status", env=env)  # through the API server's service proxy
    assert status.code == 0, status.err
    assert "(no proxies connected)" in status.out
    top = await meshkit("top", "--once", env=env)
    assert top.code == 0, top.err
    assert "no traffic in the last" in top.out

    flag_env = {key: value for key, value in env.items() if key != "MESHKIT_CONTEXT"}
    deleted = await meshkit("--context", "k8s:kind-meshkit", "delete", "vs", "reviews", "-n", "bookinfo",
                            env=flag_env)
    assert deleted.code == 0, deleted.err
    assert "VirtualService/bookinfo/reviews deleted" in deleted.out
    assert await objects(session, kmock, VS_COLLECTION) == []


async def test_cli_context_says_what_is_wrong(kmock: Any, kubeconfig: Path, tmp_path: Path) -> None:
    env = {**cli_env(tmp_path / "home"), "KUBECONFIG": str(kubeconfig)}
    unknown = await meshkit("--context", "kind:nope", "get", "vs", env=env)
    assert unknown.code == 2
    assert "context 'kind-nope'" in unknown.err and "meshkit kind up" in unknown.err
    no_control = await meshkit("--context", "kind", "proxy-status", env=env)
    assert no_control.code == 2
    assert "could not reach the service meshkit-system/meshkit-control" in no_control.err
