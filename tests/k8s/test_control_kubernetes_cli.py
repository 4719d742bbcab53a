"""``meshkit control --kubernetes`` as a real process following a KMock API server (``--kube-api``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.k8s import kube_objects as k
from tests.k8s.operator_harness import prepare, until
from tests.test_cli import admin, cli_env, meshkit, start_control

pytestmark = pytest.mark.timeout(90)
WAIT_S = 20.0


async def test_meshkit_control_kubernetes_mirrors_the_cluster_and_refuses_cli_writes(
        kmock: Any, tmp_path: Path) -> None:
    prepare(kmock)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await k.Cluster(session, kmock.url).create_bookinfo()
        control = await start_control(tmp_path, "--kubernetes", "--kube-api", str(kmock.url),
                                      "--state-dir", str(tmp_path / "control"))
        try:
            registry: dict[str, Any] = {}

            async def poll() -> bool:
                async with session.get(f"{control.url}/api/v1/registry", headers=admin(tmp_path)) as response:
                    registry.update(await response.json())
                return len(registry.get("endpoints") or []) == len(k.WORKLOADS)

            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while not await poll():
                assert loop.time() < deadline, f"registry not mirrored: {registry}"
                await asyncio.sleep(0.1)
            assert sorted(s["name"] for s in registry["services"]) == k.services()

            env = cli_env(tmp_path, control.url)
            got = await meshkit("get", "vs", "-A", "-o", "json", env=env)
            assert got.code == 0, got.err
            [item] = json.loads(got.out)["items"]
            assert (item["kind"], item["metadata"]["name"]) == ("VirtualService", "reviews"), item

            (tmp_path / "vs.yaml").write_text(k.ISTIO_YAML)
            refused = await meshkit("apply", "-f", str(tmp_path / "vs.yaml"), env=env)
            assert refused.code == 1
            assert "mirrored from kubernetes" in refused.out + refused.err
            assert "kubectl apply" in refused.out + refused.err
        finally:
            code = await control.stop()
    assert code == 0
    await until("nothing left", lambda: control.process.returncode is not None, 5)


async def test_without_a_cluster_to_follow_it_says_so(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), "KUBECONFIG": str(tmp_path / "missing-kubeconfig")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    result = await meshkit("control", "--kubernetes", "--port", "0", env=env)
    assert result.code == 1
    assert "error: no Kubernetes API to follow:" in result.err and "--kube-api URL" in result.err
    assert "Traceback" not in result.err
