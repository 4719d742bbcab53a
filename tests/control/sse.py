"""A test stand-in for the sidecar's xDS client: a real SSE connection that ACKs or NACKs snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp


class Subscriber:
    """Holds ``GET /api/v1/xds/stream?id=...`` open; every snapshot lands in ``snapshots`` (a queue).

    ``mode`` is "ack" (answer every snapshot with an ACK), "nack" or "silent" (never answer).
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, proxy_id: str,
                 mode: str = "ack", headers: dict[str, str] | None = None) -> None:
        self.session = session
        self.headers = headers or {}  # its credential, when the session carries none
        self.base_url = base_url
        self.proxy_id = proxy_id
        self.mode = mode
        self.snapshots: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received: list[dict[str, Any]] = []
        self.pings = 0
        self._task: asyncio.Task[None] | None = None
        self._response: aiohttp.ClientResponse | None = None

    async def start(self) -> Subscriber:
        url = f"{self.base_url}/api/v1/xds/stream"
        self._response = await self.session.get(url, params={"id": self.proxy_id}, headers=self.headers,
                                                timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        assert self._response.status == 200, await self._response.text()
        assert self._response.headers["Content-Type"].startswith("text/event-stream")
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._response is not None
        event: str | None = None
        async for raw in self._response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(": ping"):
                self.pings += 1
            elif line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event == "snapshot":
                snapshot = json.loads(line[len("data: "):])
                self.received.append(snapshot)
                if self.mode != "silent":
                    await self.respond(snapshot["version"], "ACK" if self.mode == "ack" else "NACK",
                                       reason="test: refused" if self.mode == "nack" else None)
                await self.snapshots.put(snapshot)
                event = None

    async def respond(self, version: str, status: str, reason: str | None = None) -> int:
        body: dict[str, Any] = {"id": self.proxy_id, "version": version, "status": status}
        if reason is not None:
            body["reason"] = reason
        async with self.session.post(f"{self.base_url}/api/v1/xds/ack", json=body,
                                     headers=self.headers) as response:
            return response.status

    async def next(self, within: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.snapshots.get(), within)

    async def nothing_within(self, seconds: float) -> bool:
        """True when no snapshot arrives within ``seconds``."""
        try:
            await asyncio.wait_for(self.snapshots.get(), seconds)
        except TimeoutError:
            return True
        return False

    @property
    def ended(self) -> bool:
        return self._task is not None and self._task.done()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self._task
        if self._response is not None:
            self._response.close()
