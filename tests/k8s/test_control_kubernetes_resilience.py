"""The Kubernetes backend when the API server goes away: it keeps the last mirror, then catches up.

A TCP relay between the control plane and KMock is cut (open watches dropped, new connections
refused) while objects change in the cluster; once it is back, the sync lists again and the
store and registry match the cluster, including a delete that no watch could report.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock as kmocklib
import pytest
import yarl

from meshkit.k8s.api import KubeAccess
from meshkit.k8s.control_plane import SyncOptions, run_kubernetes_control_plane
from tests.k8s import kube_objects as k
from tests.k8s.operator_harness import prepare, until

pytestmark = pytest.mark.timeout(60)
WAIT_S = 15.0


class Relay:
    """A TCP relay on 127.0.0.1 to ``target``; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)

    def cut(self) -> None:
        self.open = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture()
async def relay(kmock: Any) -> AsyncIterator[Relay]:
    running = await Relay(int(yarl.URL(str(kmock.url)).port or 0)).start()
    try:
        yield running
    finally:
        await running.close()


async def test_a_lost_api_server_keeps_the_mirror_and_the_sync_catches_up(
        kmock: Any, relay: Relay, tmp_path: Path) -> None:
    prepare(kmock)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        cluster = k.Cluster(session, kmock.url)
        await cluster.create_bookinfo()
        running = await run_kubernetes_control_plane(
            KubeAccess.url(f"http://127.0.0.1:{relay.port}"), port=0, state_dir=tmp_path / "control",
            record_address=False, with_ca=False, sync_options=SyncOptions(max_backoff_s=0.3))
        try:
            assert await running.sync.wait_synced(WAIT_S)
            plane = running.control_plane
            lists = running.sync.stats.lists

            relay.cut()
            await until("the sync noticing", lambda: running.sync.stats.errors > 0, WAIT_S)
            [vs] = [d for d in k.istio_documents() if d["kind"] == "VirtualService"]
            await cluster.request("DELETE", k.istio_path(vs, named=True))
            await cluster.request("DELETE", f"/api/v1/namespaces/{k.NAMESPACE}/services/ratings")
            await asyncio.sleep(0.5)
            # meanwhile the sidecars keep getting the last mirrored config
            assert "VirtualService" in [r.kind for r in plane.store.resources()]
            assert "ratings" in [s.name for s in plane.registry.services()]

            relay.open = True
            await until("the delete mirrored after the relist",
                        lambda: "VirtualService" not in [r.kind for r in plane.store.resources()], WAIT_S)
            await until("the service removal mirrored",
                        lambda: "ratings" not in [s.name for s in plane.registry.services()], WAIT_S)
            await until("every type listed again", lambda: running.sync.stats.lists >= lists + 7, WAIT_S)
        finally:
            await running.close()


async def test_ready_only_after_the_first_sync(kmock: Any, tmp_path: Path) -> None:
    """The deployed readiness probe (``--ready-port``): a control plane that has not mirrored the
    cluster yet answers 503 (it used to be a TCP check, ready with an empty registry)."""
    prepare(kmock)
    blocked = {"pods": True}
    kmock[lambda request: blocked["pods"] and request.url.path == "/api/v1/pods"] << (
        lambda: kmocklib.Response(status=503, payload={"kind": "Status", "code": 503, "message": "busy"}))
    running = await run_kubernetes_control_plane(
        KubeAccess.url(str(kmock.url)), port=0, state_dir=tmp_path / "control", record_address=False,
        with_ca=False, sync_options=SyncOptions(debounce_s=0.01, max_backoff_s=0.2))
    try:
        port = await running.serve_readiness("127.0.0.1", 0)
        async with aiohttp.ClientSession() as session:
            async def status() -> int:
                async with session.get(f"http://127.0.0.1:{port}/ready") as response:
                    return response.status

            assert await status() == 503
            blocked["pods"] = False
            assert await running.sync.wait_synced(15)
            assert await status() == 200
    finally:
        await running.close()
