"""``sniff_tls`` on real accepted TCP sockets: nothing is consumed, split records, closes, silence."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from meshkit.proxy.tls.sniff import sniff_tls


@contextlib.asynccontextmanager
async def _pair() -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    """(client, accepted server side), both non-blocking, over 127.0.0.1."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        server, _ = await loop.sock_accept(listener)
        server.setblocking(False)
        try:
            yield client, server
        finally:
            client.close()
            server.close()


async def test_plaintext_is_seen_and_not_consumed() -> None:
    async with _pair() as (client, server):
        client.send(b"GET / HTTP/1.1\r\n")
        async with asyncio.timeout(5):
            assert await sniff_tls(server) is False
            assert await asyncio.get_running_loop().sock_recv(server, 100) == b"GET / HTTP/1.1\r\n"


async def test_tls_record_split_across_segments_is_recognised() -> None:
    async with _pair() as (client, server):
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.send(b"\x16")
        sniffing = asyncio.create_task(sniff_tls(server))
        await asyncio.sleep(0.05)
        assert not sniffing.done()  # one byte of 0x16 is not enough to decide
        client.send(b"\x03\x01\x00\x05hello")
        async with asyncio.timeout(5):
            assert await sniffing is True
        assert server.recv(100) == b"\x16\x03\x01\x00\x05hello"  # still all there


async def test_peer_closing_first_gives_none() -> None:
    async with _pair() as (client, server):
        client.close()
        async with asyncio.timeout(5):
            assert await sniff_tls(server) is None


async def test_silent_peer_is_bounded_by_the_callers_timeout() -> None:
    async with _pair() as (_client, server):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await sniff_tls(server)
        # the reader registration was removed: the socket can be sniffed again
        _client.send(b"\x16\x03\x03")
        async with asyncio.timeout(5):
            assert await sniff_tls(server) is True
