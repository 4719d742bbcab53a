"""Live updates for the web console: ``GET /api/v1/events``, a Server-Sent Events stream (admin token).

    event: hello      {"revision": N}      the first frame: the store's current revision
    event: config     {"revision": N}      the config changed (apply, delete, rollback, reset)
    event: proxies    {"revision": N}      a proxy connected, left, ACKed or NACKed
    event: telemetry  {"at": SECONDS}      a scrape round finished: the graph has new data
    : keepalive                            every ``keepalive`` seconds while nothing happens

A frame says *what* changed, never the data: the page re-reads it from the same REST API the CLI
uses, so the stream adds no second view of the mesh to keep right. A burst coalesces (each stream
waits ``settle`` seconds after a wake-up and sends one frame per kind, with its newest payload), so
an apply that 40 proxies ACK costs a console one ``proxies`` frame, not 40.

The page reads the stream with ``fetch()`` (``EventSource`` cannot send the ``Authorization``
header, and the token must not travel in a URL) and with ``Accept: text/event-stream``, which is
what makes jupyter-server-proxy stream a response instead of buffering it (Binder). Streams are
bounded in number (503 past ``max_streams``); a console that stops reading for ``write_timeout``
seconds is dropped; closing the feed (control-plane shutdown) ends every stream.

It must not read or change the mesh itself: the control plane's parts call `publish`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from meshkit.control import sse

API = "/api/v1/events"
MAX_STREAMS = 64  # consoles open at once: a workshop's projector plus a room's laptops
KINDS = ("config", "proxies", "telemetry")
LEFT_CHECK = 1.0  # seconds between checks that the console is still connected


class _Subscriber:
    __slots__ = ("pending", "wake")

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, Any]] = {}  # kind -> newest payload not yet sent
        self.wake = asyncio.Event()


class ConsoleEvents:
    """Fans each change out to every open stream; keeps no history (a reconnecting page re-reads)."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self._subscribers: set[_Subscriber] = set()
        self.max_streams = max_streams
        self.closed = False

    @property
    def streams(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if kind not in KINDS:
            raise ValueError(f"console event kind {kind!r}: expected one of {', '.join(KINDS)}")
        for subscriber in self._subscribers:
            subscriber.pending[kind] = data
            subscriber.wake.set()

    def close(self) -> None:
        self.closed = True
        for subscriber in self._subscribers:
            subscriber.wake.set()

    @contextmanager
    def subscribe(self) -> Iterator[_Subscriber]:
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)


async def stream(request: web.Request, events: ConsoleEvents, hello: dict[str, Any], *, settle: float = 0.2,
                 keepalive: float = 15.0, write_timeout: float = 10.0) -> web.StreamResponse:
    """Send ``hello``, then the coalesced changes, until the page leaves, stops reading or the feed closes."""
    if events.streams >= events.max_streams:
        raise web.HTTPServiceUnavailable(text=f"{events.max_streams} consoles are already following this "
                                              "control plane: close one (the others poll meanwhile)")
    with events.subscribe() as subscriber:
        response = await sse.open_stream(request, write_timeout=write_timeout)

        async def send(data: bytes) -> bool:
            return await sse.send(request, response, data, write_timeout=write_timeout, reader="a console")

        if not await send(b"retry: 2000\n\n" + sse.frame("hello", hello)):
            return response
        idle_since = asyncio.get_running_loop().time()
        while not events.closed:
            try:  # wake at least once a second: a closed tab frees its slot then, not at the next write
                await asyncio.wait_for(subscriber.wake.wait(), min(keepalive, LEFT_CHECK))
            except TimeoutError:
                if sse.reader_left(request):
                    break
                if asyncio.get_running_loop().time() - idle_since >= keepalive:
                    if not await send(b": keepalive\n\n"):
                        break
                    idle_since = asyncio.get_running_loop().time()
                continue
            idle_since = asyncio.get_running_loop().time()
            await asyncio.sleep(settle)
            subscriber.wake.clear()
            pending, subscriber.pending = subscriber.pending, {}
            frames = b"".join(sse.frame(kind, data) for kind, data in pending.items())
            if events.closed or not await send(frames):
                break
        return response


def add_route(app: web.Application, events: ConsoleEvents, revision: Callable[[], int]) -> None:
    """Register ``GET /api/v1/events`` (the auth middleware requires the admin token for it)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream(request, events, {"revision": revision()})

    app.router.add_get(API, handler)
