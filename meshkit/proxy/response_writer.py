"""The writing half of a downstream connection: a ``Response`` onto the client's transport.

``ResponseWriter`` is the base class of ``downstream.DownstreamConnection``: it writes a response's
head (``framing.response_head``: Content-Length, chunked, or nothing for HEAD/204/304) and its body,
a bytes body with the head in one write, a streamed one chunk by chunk, waiting while the client
does not read (``pause_writing``: the transport's buffer is above its high-water mark). A body that
cannot be completed aborts the connection: closing is the only honest signal left.

Every response goes out through ``_write_head``, so anything added here is paid per request. Must
not: read or parse requests, decide which request is served next or when the connection closes for
any reason but a broken response body (``downstream`` does), or hold state of its own: the
attributes below are the connection's, set in its ``__init__`` (no second constructor to call).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from meshkit.proxy.bodies import BodyError
from meshkit.proxy.framing import BODY_CHUNKED, BODY_DONE, response_head
from meshkit.proxy.http import Request, Response, UpstreamError


class ResponseWriter:
    """Writes responses to ``transport`` (see the module docstring)."""

    # Set by ``DownstreamConnection.__init__`` and maintained by its protocol callbacks.
    _loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    closed: bool  # the transport is gone: nothing more is written
    closing: bool  # close once the queued responses are written
    _head_written: bool  # the response in progress has its head out (no 500 can replace it)
    _write_paused: bool
    _drain: asyncio.Future[None] | None

    def pause_writing(self) -> None:
        self._write_paused = True

    async def _write_response(self, request: Request, response: Response) -> None:
        mode = self._write_head(request, response)
        if mode != BODY_DONE or not isinstance(response.body, bytes):
            await self._write_body(response.body, mode)

    def _write_head(self, request: Request, response: Response) -> int:
        """Write the head (and a bytes body with it); returns how the body follows (framing.BODY_*).

        Split from ``_write_body`` so the common case, a bytes body, costs no coroutine frame."""
        data, mode, self.closing = response_head(request, response, self.closing)
        self._head_written = True
        self._write(data)
        return mode

    async def _write_body(self, body: Any, mode: int) -> None:
        if mode != BODY_DONE:
            await self._stream_body(body, mode == BODY_CHUNKED)
        else:
            await close_body(body)  # a streamed body that must not be sent (HEAD, 204, 304)

    async def _stream_body(self, body: Any, chunked: bool) -> None:
        complete = False
        try:
            async for chunk in body:
                if self.closed:
                    break
                if chunk:
                    self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if self._write_paused:
                        await self._wait_drain()
            else:
                complete = True
        except (BodyError, UpstreamError):
            complete = False
        finally:
            if not complete:
                await close_body(body)
        if complete:
            if chunked:
                self._write(b"0\r\n\r\n")
        else:
            # The body could not be completed: the only honest signal left is closing.
            self.closing = True
            self.abort()

    async def _wait_drain(self) -> None:
        if self.closed:
            return
        self._drain = self._loop.create_future()
        await self._drain
        self._drain = None

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def close_body(body: Any) -> None:
    if not isinstance(body, bytes) and hasattr(body, "aclose"):
        with contextlib.suppress(Exception):
            await body.aclose()
