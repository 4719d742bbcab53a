"""Server-Sent Events out of aiohttp for long-lived browser streams (the console's `/api/v1/events`,
the workshop's live board): open the response with a bounded socket, format frames, and write
each with a time limit that drops a reader who stopped reading.

A reader that stops reading (a laptop lid closed, a half-open TCP connection) must not hold the
server's memory or a stream slot: the socket's kernel send buffer is bounded (``send_buffer``), a
write that cannot finish within ``write_timeout`` seconds aborts the connection, and on Linux
``TCP_USER_TIMEOUT`` drops a connection whose sent data stays unacknowledged that long.

It must not know what the frames say or when to send them: that is its callers' business. (The
sidecars' xDS stream, `push.py`, is not a browser stream and keeps its own framing.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from aiohttp import web

HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
SEND_BUFFER = 256 * 1024
log = logging.getLogger(__name__)


def frame(event: str, data: Any) -> bytes:
    """One ``event:``/``data:`` frame; ``data`` as compact JSON on one line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def open_stream(request: web.Request, *, write_timeout: float,
                      send_buffer: int = SEND_BUFFER) -> web.StreamResponse:
    """The prepared ``text/event-stream`` response, its socket bounded as the module says."""
    _bound_socket(request, send_buffer, write_timeout)
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    return response


async def send(request: web.Request, response: web.StreamResponse, data: bytes, *, write_timeout: float,
               reader: str = "a reader") -> bool:
    """Write ``data``; False (the connection aborted) when it does not leave within ``write_timeout``
    or the reader is gone."""
    try:
        async with asyncio.timeout(write_timeout):
            await response.write(data)
    except TimeoutError:
        log.info("event stream: %s stopped reading for %.0f s; dropped", reader, write_timeout)
        if request.transport is not None:
            request.transport.abort()
        return False
    except ConnectionError:
        return False
    return True


def reader_left(request: web.Request) -> bool:
    """The reader closed its connection (noticed without writing to it)."""
    return request.transport is None or request.transport.is_closing()


def _bound_socket(request: web.Request, send_buffer: int, write_timeout: float) -> None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(write_timeout * 1000))
    except OSError as error:  # not fatal: the write timeout still applies
        log.debug("event stream: cannot bound the socket: %s", error)
