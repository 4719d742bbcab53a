"""Live updates for the dashboard: a change feed and the Server-Sent Events stream built on it.

Every change to the store calls `ChangeFeed.notify`; each open dashboard stream waits for it,
lets a burst settle (``settle`` seconds, so 50 attendees reporting at once cost one update, not 50)
and sends what changed since its last frame: ``event: patch`` with the attendee rows that changed
(``rows``) and the other top-level fields that changed, or the whole board as ``event: board``
when the attendee list or the columns changed (and as the first frame). With 100 attendees x 10
labs the whole board is ~200 kB; a patch after one result is one row plus the lists (a few kB,
see benchmarks/README.md). A comment line every ``keepalive`` seconds keeps idle connections (and
proxies) open. Streams are bounded in number; closing the feed ends them.

A dashboard that stops reading (a laptop lid closed, a half-open TCP connection) must not hold the
server's memory or a stream slot: each stream's kernel send buffer is bounded (``send_buffer``),
a write that cannot finish within ``write_timeout`` seconds drops the stream, and on Linux
``TCP_USER_TIMEOUT`` drops a connection whose sent data stays unacknowledged that long. The
browser's EventSource reconnects by itself (``retry: 1000``) and gets the whole board again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from meshkit.control import sse

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
    def streams(self) -> int:
        """Open live streams."""
        return len(self._waiters)

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


def board_patch(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, Any] | None:
    """What changed from ``previous`` to ``current`` (see the module doc); None: send the board."""
    old_rows, new_rows = previous.get("attendees", []), current.get("attendees", [])
    if previous.get("columns") != current.get("columns") or \
            [row["id"] for row in old_rows] != [row["id"] for row in new_rows]:
        return None
    patch = {key: value for key, value in current.items()
             if key != "attendees" and previous.get(key) != value}
    patch["rows"] = [row for old, row in zip(old_rows, new_rows, strict=True) if old != row]
    return patch


def apply_patch(state: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The board a client has after ``patch`` (what dashboard.js does; for Python followers)."""
    rows = {row["id"]: row for row in patch.get("rows", [])}
    rest = {key: value for key, value in patch.items() if key != "rows"}
    return {**state, **rest, "attendees": [rows.get(row["id"], row) for row in state["attendees"]]}


async def stream_board(request: web.Request, feed: ChangeFeed, board: Callable[[], dict[str, Any]], *,
                       settle: float = 0.25, keepalive: float = 15.0, write_timeout: float = 10.0,
                       send_buffer: int = 256 * 1024) -> web.StreamResponse:
    """Send the board now and after every change until the client leaves, stops reading
    (``write_timeout``) or the feed closes."""
    if feed.full:
        raise web.HTTPServiceUnavailable(text=json.dumps({"error": "too many dashboards are open"}),
                                         content_type="application/json")
    with feed.subscribe() as changed:
        response = await sse.open_stream(request, write_timeout=write_timeout, send_buffer=send_buffer)

        async def send(data: bytes) -> bool:
            return await sse.send(request, response, data, write_timeout=write_timeout, reader="a dashboard")

        last = board()
        if not await send(b"retry: 1000\n\n" + sse.frame("board", last)):
            return response
        while not feed.closed:
            try:
                await asyncio.wait_for(changed.wait(), keepalive)
            except TimeoutError:
                if not await send(b": keepalive\n\n"):
                    break
                continue
            await asyncio.sleep(settle)
            changed.clear()
            if feed.closed:
                break
            current = board()
            patch = board_patch(last, current)
            last = current
            if not await send(sse.frame("board", current) if patch is None else sse.frame("patch", patch)):
                break
        return response
