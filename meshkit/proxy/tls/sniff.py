"""Telling TLS from plaintext on an accepted socket, without consuming a byte.

PERMISSIVE inbound ports carry both plaintext and mTLS: ``looks_like_tls`` tells them apart
from the first bytes, ``sniff_tls`` peeks at them (``MSG_PEEK``) on an accepted non-blocking
socket. ``inbound.MtlsAcceptor`` uses both on every inbound connection; ``peek_sni`` peeks at a
ClientHello's server name (a gateway's PASSTHROUGH and ISTIO_MUTUAL servers).

It must not do: read or consume data, handshake, or decide policy (``filters.authn`` does).
"""

from __future__ import annotations

import asyncio
import socket

from meshkit.proxy.sni import MAX_RECORD, NEED_MORE, client_hello_sni

TLS_HANDSHAKE = 0x16


def looks_like_tls(first_bytes: bytes) -> bool:
    """True when the bytes open a TLS handshake record: 0x16 0x03 0x00..0x04 (SSL 3.0 .. TLS 1.3).

    Needs at least three bytes; an HTTP/1.x request can never start with 0x16.
    """
    return (
        len(first_bytes) >= 3
        and first_bytes[0] == TLS_HANDSHAKE
        and first_bytes[1] == 0x03
        and first_bytes[2] <= 0x04
    )


async def wait_readable(fd: int) -> None:
    """Until ``fd`` has bytes to read (or EOF): one reader callback, removed afterwards."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def sniff_tls(sock: socket.socket) -> bool | None:
    """Peek (``MSG_PEEK``, nothing consumed) at a freshly accepted non-blocking socket.

    Returns True for TLS, False for anything else, None when the peer closed first. Bound it
    with ``asyncio.timeout`` (a client that sends nothing would otherwise hold it). Afterwards
    hand the socket to ``loop.connect_accepted_socket(..., ssl=server_context if tls else None)``.
    """
    fd = sock.fileno()
    for _ in range(10_000):  # each turn waits for readability or 5 ms; the caller's timeout bounds it
        try:
            head: bytes | None = sock.recv(3, socket.MSG_PEEK)
        except BlockingIOError:
            head = None
        except OSError:
            return None
        if head == b"":
            return None
        if head is not None and (len(head) >= 3 or head[0] != TLS_HANDSHAKE):
            return looks_like_tls(head)
        if head is None:  # nothing yet: wait until readable
            await wait_readable(fd)
        else:  # 1-2 bytes of a possible TLS record: the rest is in flight
            await asyncio.sleep(0.005)
    return None


async def peek_sni(sock: socket.socket) -> str | None:
    """The SNI of the ClientHello waiting on ``sock``, peeked (``MSG_PEEK``): nothing is consumed.
    None: not TLS, no name, or the peer closed; the caller bounds the time."""
    seen = b""
    for _ in range(2000):
        await wait_readable(sock.fileno())
        try:
            data = sock.recv(MAX_RECORD, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not data:
            return None
        found = client_hello_sni(data)
        if found is not NEED_MORE:
            return found
        if len(data) == len(seen):
            await asyncio.sleep(0.005)  # the rest of the record is in flight (the socket stays readable)
        seen = data
    return None
