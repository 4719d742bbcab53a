"""The console's live updates (`GET /api/v1/events`): a real control plane on a socket, read as the
page reads it (a streamed HTTP response with the admin token in a header, parsed as SSE)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from meshkit.control.server import RunningControlPlane, run_control_plane
from tests.control.conftest import SubscriberFactory
from tests.control.resources import BOOKINFO_REVIEWS
from tests.waiting import async_wait_until

EVENTS = "/api/v1/events"
YAML = {"Content-Type": "application/yaml"}


class ConsoleStream:
    """One console's stream: frames land in ``frames`` as (event, data) in order."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.frames: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.ended = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event, data = "message", ""
        try:
            async for raw in self.response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    data = line[len("data: "):]
                elif not line and data:
                    await self.frames.put((event, json.loads(data)))
                    event, data = "message", ""
        finally:
            self.ended.set()

    async def next(self, kind: str) -> dict[str, Any]:
        """The next frame of ``kind`` within 10 s (earlier frames of other kinds are skipped)."""
        async with asyncio.timeout(10):
            while True:
                event, data = await self.frames.get()
                if event == kind:
                    return data

    async def close(self) -> None:
        self.response.close()
        self._task.cancel()


@asynccontextmanager
async def console(session: aiohttp.ClientSession, url: str) -> AsyncIterator[ConsoleStream]:
    response = await session.get(url + EVENTS, headers={"Accept": "text/event-stream"},
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    stream = ConsoleStream(response)
    try:
        yield stream
    finally:
        await stream.close()


async def _apply(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(f"{url}/api/v1/apply", data=BOOKINFO_REVIEWS, headers=YAML) as r:
        assert r.status == 200, await r.text()
        return int((await r.json())["revision"])


async def test_a_console_hears_of_config_proxy_and_telemetry_changes(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession,
        subscribe: SubscriberFactory) -> None:
    url = control_plane.url
    async with console(session, url) as stream:
        assert await stream.next("hello") == {"revision": 0}
        revision = await _apply(session, url)
        assert await stream.next("config") == {"revision": revision}
        await subscribe("reviews-v1-0.default")  # a sidecar connects, is sent its snapshot and ACKs it
        assert await stream.next("proxies") == {"revision": revision}
        async with session.post(f"{url}/api/v1/telemetry/scrape") as r:
            scraped_at = (await r.json())["scraped_at"]
        assert (await stream.next("telemetry"))["at"] == scraped_at


async def test_a_burst_is_one_frame_with_the_newest_state(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    events = control_plane.control_plane.console_events
    async with console(session, control_plane.url) as stream:
        await stream.next("hello")
        for revision in range(1, 21):
            events.publish("config", {"revision": revision})
        assert await stream.next("config") == {"revision": 20}
        events.publish("telemetry", {"at": 1.0})  # a marker: the next frame, with no config before it
        async with asyncio.timeout(10):
            assert await stream.frames.get() == ("telemetry", {"at": 1.0})


async def test_the_stream_needs_the_admin_token_and_is_bounded(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    url = control_plane.url
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(url + EVENTS) as r:
            assert r.status == 401
        async with anonymous.get(url + EVENTS, headers={"Authorization": "Bearer not-the-token"}) as r:
            assert r.status == 401
    control_plane.control_plane.console_events.max_streams = 2
    async with console(session, url) as first, console(session, url) as second:
        await first.next("hello")
        await second.next("hello")
        async with session.get(url + EVENTS) as r:
            assert r.status == 503
            assert "2 consoles are already following" in (await r.json())["error"]
    events = control_plane.control_plane.console_events
    await async_wait_until(lambda: events.streams == 0, 5, "the control plane to notice both consoles left")
    async with console(session, url) as again:  # the two left: their slots are free again
        await again.next("hello")


async def test_a_control_plane_shutdown_ends_every_stream(tmp_path: Path,
                                                          session: aiohttp.ClientSession) -> None:
    running = await run_control_plane(port=0, state_dir=tmp_path, with_ca=False)
    closed = False
    try:
        async with console(session, running.url) as stream:
            await stream.next("hello")
            await running.close()
            closed = True
            async with asyncio.timeout(5):
                await stream.ended.wait()
    finally:
        if not closed:
            await running.close()
