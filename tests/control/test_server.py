"""Running the control plane: the recorded address, and a restart on the same state dir losing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from meshkit.control.address import address_file, read_recorded_address
from meshkit.control.server import run_control_plane
from tests.control.resources import BOOKINFO_REVIEWS, SERVICE, endpoint, virtual_service

YAML = {"Content-Type": "application/yaml"}


async def test_restart_keeps_config_history_and_registry(tmp_path: Path,
                                                         session: aiohttp.ClientSession) -> None:
    async with await run_control_plane(port=0, state_dir=tmp_path, with_ca=False) as first:
        base = first.url + "/api/v1"
        assert read_recorded_address(tmp_path) == first.url
        assert json.loads(address_file(tmp_path).read_text())["url"] == first.url
        for path, body in (("registry/services", SERVICE), ("registry/endpoints", endpoint("reviews-v1-0"))):
            async with session.post(f"{base}/{path}", json=body) as response:
                assert response.status == 200
        for text in (BOOKINFO_REVIEWS, virtual_service("v2")):
            async with session.post(f"{base}/apply", data=text, headers=YAML) as response:
                assert response.status == 200
        async with session.get(f"{base}/config", params={"format": "yaml"}) as response:
            config_before = await response.text()
    assert read_recorded_address(tmp_path) is None  # removed on a clean stop

    async with await run_control_plane(port=0, state_dir=tmp_path, with_ca=False) as second:
        base = second.url + "/api/v1"
        async with session.get(f"{base}/config", params={"format": "yaml"}) as response:
            assert await response.text() == config_before
        async with session.get(f"{base}/history") as response:
            history = await response.json()
        assert history["revision"] == 2
        assert [r["summary"] for r in history["revisions"]] == [
            "apply: created DestinationRule/default/reviews, created VirtualService/default/reviews",
            "apply: configured VirtualService/default/reviews"]
        async with session.get(f"{base}/registry") as response:
            registry = await response.json()
        assert [e["instance"] for e in registry["endpoints"]] == ["reviews-v1-0"]
        async with session.post(f"{base}/rollback", json={"revision": 1}) as response:
            assert (await response.json())["revision"] == 3


async def test_close_ends_open_streams_promptly(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    running = await run_control_plane(port=0, state_dir=tmp_path, with_ca=False)
    response = await session.get(f"{running.url}/api/v1/xds/stream", params={"id": "client-0.default"})
    assert response.status == 200
    await response.content.readline()
    await running.close()
    assert await response.content.read() is not None  # the open stream ended with the close
    response.close()
