"""A tiny forward proxy that stands in for the sidecar in the apps' tests.

The apps under test get ``HTTP_PROXY=<this proxy>`` and send absolute-form requests such
as ``GET http://reviews:9080/reviews/0``; the proxy maps the Host (``reviews:9080``) to
an app's real port on 127.0.0.1 (like a VirtualService, switchable per test with
``routed``) and records every request it saw, as a sidecar's access log would, so tests
can check what the apps sent. It runs its own event loop in a thread, so it works from
synchronous fixtures of any scope and from async tests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "content-length"}
)
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Seen:
    """One request that reached the proxy (header names lower-cased)."""

    host: str
    method: str
    path: str
    headers: dict[str, str]


class ForwardProxy:
    def __init__(self) -> None:
        self.routes: dict[str, int] = {}
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-forward-proxy", daemon=True)
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ForwardProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self._loop.close()

    @contextlib.contextmanager
    def routed(self, host: str, port: int | None) -> Iterator[None]:
        """Send ``host`` to ``port`` (None: no route, the proxy answers 502) for the block's duration."""
        before = self.routes.get(host)
        self._set(host, port)
        try:
            yield
        finally:
            self._set(host, before)

    def _set(self, host: str, port: int | None) -> None:
        if port is None:
            self.routes.pop(host, None)
        else:
            self.routes[host] = port

    def seen(self, *, host: str | None = None, request_id: str | None = None) -> list[Seen]:
        with self._lock:
            found = list(self._seen)
        return [
            s for s in found
            if (host is None or s.host == host)
            and (request_id is None or s.headers.get("x-request-id") == request_id)
        ]

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.ServerRunner(web.Server(self._handle), shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        host = request.headers.get("Host", "")
        lowered = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self._seen.append(Seen(host, request.method, request.path_qs, lowered))
        port = self.routes.get(host)
        if port is None or self._session is None:
            return web.Response(status=502, text=f"test proxy: no route to {host}")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with self._session.request(
                request.method,
                f"http://127.0.0.1:{port}{request.path_qs}",
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=60),
            ) as answer:
                body = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
                return web.Response(status=answer.status, body=body, headers=kept)
        except aiohttp.ClientError as exc:
            return web.Response(status=503, text=f"test proxy: upstream {host} failed: {exc}")
