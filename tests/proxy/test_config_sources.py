"""Where snapshots come from: static file + SIGHUP, NACKs, the SSE push stream, swaps under load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshkit.proxy.xds import ConfigState, SseDecoder, StaticConfig, XdsClient
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot, simple_route, spawn_proxy, stop_process
from tests.waiting import async_wait_until


def _get(port: int, path: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host} if host else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _wait_for(check: Any, what: str, limit: float = 10.0) -> Any:
    """Poll the blocking ``check`` (off the event loop: the fake control plane runs on it)."""
    return await async_wait_until(lambda: asyncio.to_thread(check), limit, what)


def _dump(port: int) -> dict[str, Any]:
    return json.loads(_get(port, "/config_dump")[1])


def test_sse_decoder_handles_split_lines_comments_and_multiline_data() -> None:
    decoder = SseDecoder()
    assert decoder.feed(": ping\n\nevent: snap") == []
    assert decoder.feed("shot\ndata: {\"a\":\r\n") == []
    assert decoder.feed("data: 1}\n\n") == [("snapshot", '{"a":\n1}')]
    assert decoder.feed("data: x\n\n") == [("message", "x")]


async def test_static_config_sighup_reload_and_nack(
    echo_app: EchoApp, echo_v2: EchoApp, tmp_path: Path
) -> None:
    path = tmp_path / "snap.json"
    first = make_snapshot(echo_app.port, version="one")
    path.write_text(json.dumps(first))
    proxy = spawn_proxy(["--config", str(path)], tmp_path)
    try:
        status, body = await asyncio.to_thread(_get, proxy.outbound, "/", "reviews")
        assert status == 200 and json.loads(body)["app"] == "echo-v1"
        second = make_snapshot(echo_v2.port, version="two")
        path.write_text(json.dumps(second))
        proxy.signal(signal.SIGHUP)
        await _wait_for(lambda: _dump(proxy.admin)["version"] == "two", "reload to version two")
        status, body = await asyncio.to_thread(_get, proxy.outbound, "/", "reviews")
        assert json.loads(body)["app"] == "echo-v2"
        bad = make_snapshot(echo_app.port, version="three")
        bad["clusters"]["reviews|v1"]["lb"] = "FOO"
        path.write_text(json.dumps(bad))
        proxy.signal(signal.SIGHUP)
        dump = await _wait_for(lambda: (d := _dump(proxy.admin))["last_nack"] and d, "a NACK")
        assert dump["version"] == "two"  # the old snapshot stays
        assert dump["last_nack"]["version"] == "three"
        assert "clusters.reviews|v1.lb" in dump["last_nack"]["reason"]
        path.write_text("{not json")
        proxy.signal(signal.SIGHUP)
        await _wait_for(lambda: "cannot read" in (_dump(proxy.admin)["last_nack"] or {}).get("reason", ""),
                        "a NACK for broken JSON")
        status, body = await asyncio.to_thread(_get, proxy.outbound, "/", "reviews")
        assert status == 200 and json.loads(body)["app"] == "echo-v2"
    finally:
        assert stop_process(proxy) == 0


def test_bad_static_config_at_start_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    path.write_text(json.dumps({"schema": 2, "version": "x"}))
    proxy = spawn_proxy(["--config", str(path)], tmp_path, wait_ports=False)
    assert proxy.proc.wait(20) == 2
    assert "schema" in proxy.stderr.read_text()


class ControlPlane:
    """A minimal push server speaking docs/snapshot.md's protocol (SSE stream + ACK endpoint)."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self.streams: list[web.StreamResponse] = []
        self.changed = asyncio.Event()
        self.port = 0
        self.runner: web.AppRunner | None = None
        self.stream_requests: list[str] = []

    def push(self, snapshot: dict[str, Any]) -> None:
        self.snapshots.append(snapshot)
        self.changed.set()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.stream_requests.append(request.query.get("id", ""))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        self.streams.append(response)
        sent = 0
        try:
            await response.write(b": ping\n\n")
            for _ in range(2000):  # bounded: ~100 s at most
                while sent < len(self.snapshots):
                    data = json.dumps(self.snapshots[sent])
                    await response.write(f"event: snapshot\ndata: {data}\n\n".encode())
                    sent += 1
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def ack(self, request: web.Request) -> web.Response:
        self.acks.append(await request.json())
        return web.json_response({"ok": True})

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/xds/stream", self.stream)
        app.router.add_post("/api/v1/xds/ack", self.ack)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def control() -> AsyncIterator[ControlPlane]:
    plane = ControlPlane()
    await plane.start()
    yield plane
    await plane.stop()


async def test_dynamic_mode_ack_nack_and_reconnect(
    control: ControlPlane, echo_app: EchoApp, echo_v2: EchoApp, tmp_path: Path
) -> None:
    control.push(make_snapshot(echo_app.port, version="d1"))
    proxy = spawn_proxy(["--control", f"http://127.0.0.1:{control.port}", "--id", "productpage-v1-0.default"],
                        tmp_path)
    try:
        await _wait_for(lambda: _get(proxy.admin, "/ready")[0] == 200, "ready")
        assert control.stream_requests[0] == "productpage-v1-0.default"
        await _wait_for(lambda: control.acks, "the first ACK")
        assert control.acks[0] == {"id": "productpage-v1-0.default", "version": "d1", "status": "ACK"}
        bad = make_snapshot(echo_v2.port, version="d2")
        bad["schema"] = 99
        control.push(bad)
        await _wait_for(lambda: len(control.acks) >= 2, "a NACK")
        nack = control.acks[1]
        assert nack["status"] == "NACK" and nack["version"] == "d2" and nack["reason"].startswith("schema")
        assert _dump(proxy.admin)["version"] == "d1"
        # The control plane goes away: the proxy keeps serving its last snapshot ...
        port = control.port
        await control.stop()
        status, body = await asyncio.to_thread(_get, proxy.outbound, "/", "reviews")
        assert status == 200 and json.loads(body)["app"] == "echo-v1"
        # ... and reconnects (back-off capped at 5 s) when it is back, getting the current snapshot.
        control.snapshots = [make_snapshot(echo_v2.port, version="d3")]
        control.acks.clear()
        await asyncio.sleep(0.3)  # the scenario: the control plane stays down a moment (not a wait)
        await control.start(port)
        await _wait_for(lambda: _dump(proxy.admin)["version"] == "d3", "the reconnect", limit=15)
        status, body = await asyncio.to_thread(_get, proxy.outbound, "/", "reviews")
        assert json.loads(body)["app"] == "echo-v2"
        acked = lambda: any(a["version"] == "d3" and a["status"] == "ACK" for a in control.acks)  # noqa: E731
        await _wait_for(acked, "ACK d3")
    finally:
        assert stop_process(proxy) == 0


async def test_snapshot_swaps_under_load_lose_no_request(
    echo_app: EchoApp, echo_v2: EchoApp, start_proxy: StartProxy
) -> None:
    def snapshot(i: int) -> dict[str, Any]:
        split = [{"cluster": "reviews|v1", "weight": 100 - i % 100},
                 {"cluster": "reviews|v2", "weight": i % 100}]
        if i % 100 == 0:
            split = [{"cluster": "reviews|v1", "weight": 100}]
        route = simple_route("reviews|v1") | {"route": split}
        return make_snapshot(echo_app.port, echo_v2.port, routes=[route], version=f"swap-{i}")

    proxy = await start_proxy(snapshot(0))
    url = f"http://127.0.0.1:{proxy.ports['outbound']}/load"
    failures: list[str] = []
    done = 0

    async def client() -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            for _ in range(60):
                async with session.get(url, headers={"Host": "reviews"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures.append(f"{resp.status} {await resp.text()}")
                done += 1

    async def swapper() -> int:
        swaps = 0
        for i in range(1, 400):
            assert proxy.state.apply(snapshot(i)) is None
            swaps += 1
            await asyncio.sleep(0.002)
            if done >= 8 * 60:
                break
        return swaps

    results = await asyncio.gather(*(client() for _ in range(8)), swapper())
    assert failures == []
    assert done == 480 and results[-1] > 10
    assert proxy.state.current.version.startswith("swap-")


async def test_every_nack_source_takes_the_one_nack_path(tmp_path: Path) -> None:
    """An invalid snapshot, an unreadable file and a stream event that is not JSON are NACKed alike:
    counted, recorded as the last NACK (with version and reason) and the snapshot in effect kept."""
    state = ConfigState()
    assert state.apply(make_snapshot(40000, version="good")) is None
    reasons = [state.apply({"schema": 1, "version": "bad", "clusters": []})]
    reasons.append(StaticConfig(str(tmp_path / "missing.json"), state).load())
    client = XdsClient("http://127.0.0.1:9", "node-0.default", state)
    client._on_snapshot("{not json")
    await client.close()
    assert [reason is not None for reason in reasons] == [True, True]
    assert state.rejected == 3 and state.applied == 1
    assert state.current is not None and state.current.version == "good"
    assert state.last_nack is not None and state.last_nack["version"] is None
    assert state.last_nack["reason"].startswith("snapshot: not valid JSON")
