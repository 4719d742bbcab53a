"""An accept loop of the sidecar's own, for listeners that look at a connection before HTTP does.

The mTLS acceptor (``tls.inbound``) sniffs TLS and applies PeerAuthentication; the capture acceptor
(``passthrough``) reads ``SO_ORIGINAL_DST`` and may pass the connection through as TCP. Both need
the same frame: bind, accept with back-off on errors (EMFILE and friends), one task per accepted
socket (cancelled with the loop), and the server handle ``Listener`` expects back. ``serve`` is that
frame; what a connection is and where it goes is the caller's ``admit``.

It must not read from or write to a connection: ``admit`` owns the socket from accept on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

BACKLOG = 1024
ACCEPT_RETRY_S = 0.1

Admit = Callable[[socket.socket], Coroutine[Any, Any, None]]


class AcceptingServer:
    """The bits of ``asyncio.AbstractServer`` that ``Listener`` uses, over our accept loop."""

    def __init__(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self.sockets = [sock]
        self._task = task

    def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(OSError):
            self.sockets[0].close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def serve(
    host: str, port: int, admit: Admit, what: str, sock: socket.socket | None = None
) -> AcceptingServer:
    """Listen on ``host:port`` and run ``admit(conn)`` for every accepted (non-blocking) socket.

    ``sock``: a socket already bound and listening (a worker's ``SO_REUSEPORT`` socket, ``workers``)."""
    if sock is not None:
        sock.setblocking(False)
        return AcceptingServer(sock, asyncio.ensure_future(_accept_forever(sock, admit, what)))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return AcceptingServer(sock, asyncio.ensure_future(_accept_forever(sock, admit, what)))


async def _accept_forever(sock: socket.socket, admit: Admit, what: str) -> None:
    loop = asyncio.get_running_loop()
    admitting: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("%s accept failed: %s", what, exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(admit(conn))
            admitting.add(task)
            task.add_done_callback(admitting.discard)
    finally:
        for task in list(admitting):
            task.cancel()
