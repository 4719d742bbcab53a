"""The sidecar against the real control plane: subscribe, ACK, follow a VirtualService change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from meshkit.control.auth import admin_token_file
from meshkit.control.server import run_control_plane
from tests.proxy.conftest import EchoApp, spawn_proxy, stop_process
from tests.waiting import async_wait_until

YAML = {"Content-Type": "application/yaml"}
RULES = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {subset}}}
"""


def _endpoint(instance: str, version: str, port: int) -> dict[str, Any]:
    return {"instance": instance, "workload": f"reviews-{version}", "service": "reviews",
            "namespace": "default", "address": "127.0.0.1", "port": port,
            "labels": {"app": "reviews", "version": version}, "service_account": "bookinfo-reviews",
            "has_sidecar": False}


async def _eventually(check: Any, what: str, within: float = 15.0) -> Any:
    return await async_wait_until(check, within, what, interval=0.1)


async def test_sidecar_follows_the_control_plane(
    echo_app: EchoApp, echo_v2: EchoApp, tmp_path: Path
) -> None:
    running = await run_control_plane(port=0, state_dir=tmp_path / "control", with_ca=False)
    token_file = admin_token_file(running.control_plane.directory)  # no CA: the proxy uses the admin token
    proxy = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20),
                                         headers=running.admin_headers) as session:
            url = running.url
            async with session.post(f"{url}/api/v1/registry/services",
                                    json={"name": "reviews", "namespace": "default", "port": 9080}) as r:
                assert r.status == 200, await r.text()
            endpoints = (_endpoint("reviews-v1-0", "v1", echo_app.port),
                         _endpoint("reviews-v2-0", "v2", echo_v2.port))
            for doc in endpoints:
                async with session.post(f"{url}/api/v1/registry/endpoints", json=doc) as r:
                    assert r.status == 200, await r.text()
            async with session.post(f"{url}/api/v1/apply", data=RULES.format(subset="v2"), headers=YAML) as r:
                assert r.status == 200, await r.text()
            proxy = spawn_proxy(["--control", url, "--id", "productpage-v1-0.default",
                                 "--control-token-file", str(token_file)], tmp_path)

            async def synced() -> dict[str, Any] | None:
                async with session.get(f"{url}/api/v1/proxy-status") as r:
                    proxies = {p["id"]: p for p in (await r.json())["proxies"]}
                entry = proxies.get("productpage-v1-0.default")
                return entry if entry and entry["status"] == "SYNCED" else None

            first = await _eventually(synced, "SYNCED")

            async def app_seen() -> str:
                async with session.get(f"http://127.0.0.1:{proxy.outbound}/x",
                                       headers={"Host": "reviews:9080"}) as r:
                    return json.loads(await r.text())["app"] if r.status == 200 else ""

            assert await app_seen() == "echo-v2"
            async with session.post(f"{url}/api/v1/apply", data=RULES.format(subset="v1"), headers=YAML) as r:
                assert r.status == 200, await r.text()
            await _eventually(lambda: _is(app_seen, "echo-v1"), "the switch to v1")
            second = await _eventually(synced, "SYNCED again")
            assert second["acked"] != first["acked"]
    finally:
        if proxy is not None:
            assert stop_process(proxy) == 0
        await running.close()


async def _is(check: Any, expected: str) -> bool:
    return await check() == expected
