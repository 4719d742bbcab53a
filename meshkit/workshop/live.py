"""Live updates for the dashboard: a change feed and the Server-Sent Events stream built on it.

Every change to the store calls `ChangeFeed.notify`; each open dashboard stream waits for it,
lets a burst settle (``settle`` seconds, so 50 attendees reporting at once cost one update, not 50)
and sends the whole board as one ``event: board``. A comment line every ``keepalive`` seconds keeps
idle connections (and proxies) open. Streams are bounded in number; closing the feed ends them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

MAX_STREAMS = 32


class TooManyStreams(Exception):
    """More dashboards are open than `MAX_STREAMS`."""


class ChangeFeed:
    """Wakes every subscriber when something changed; no history, no payload."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self._waiters: set[asyncio.Event] = set()
        self._max = max_streams
        self.closed = False

    def notify(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    @property
    def full(self) -> bool:
        return len(self._waiters) >= self._max

    def close(self) -> None:
        self.closed = True
        self.notify()

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Event]:
        if self.full:
            raise TooManyStreams(f"{self._max} dashboards are already open")
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)


def _frame(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream_board(request: web.Request, feed: ChangeFeed, board: Callable[[], dict[str, Any]], *,
                       settle: float = 0.25, keepalive: float = 15.0) -> web.StreamResponse:
    """Send the board now and after every change until the client leaves or the feed closes."""
    if feed.full:
        raise web.HTTPServiceUnavailable(text=json.dumps({"error": "too many dashboards are open"}),
                                         content_type="application/json")
    with feed.subscribe() as changed:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n" + _frame("board", board()))
        while not feed.closed:
            try:
                await asyncio.wait_for(changed.wait(), keepalive)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            await asyncio.sleep(settle)
            changed.clear()
            if feed.closed:
                break
            await response.write(_frame("board", board()))
        return response
