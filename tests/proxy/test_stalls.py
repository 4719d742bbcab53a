"""Clients that stall: a request body that stops arriving (stream idle timeout) and a client
that pipelines requests without reading the answers (back-pressure), on the real sidecar."""

from __future__ import annotations

import asyncio
import socket
import time

from meshkit.proxy.listener import DownstreamConnection, Listener
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot
from tests.proxy.rawhttp import RawConnection

RESPONSE_BYTES = 200_000
PIPELINED = 150


async def _poll(condition: object, wait: float = 20.0) -> None:
    deadline = time.monotonic() + wait
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.02)


async def test_a_stalled_body_is_ended_after_the_stream_idle_timeout(
    echo_app: EchoApp, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port), "--stream-idle-timeout", "1")
    conn = await RawConnection.open(proxy.ports["outbound"])
    await conn.send(b"POST /upload HTTP/1.1\r\nHost: reviews\r\nContent-Length: 100\r\n\r\nonly 13 bytes")
    response = await conn.response(wait=15)
    assert response.status == 408 and response.body == b"stream timeout\n"
    assert await conn.closed_by_peer()
    assert proxy.listeners["outbound"].stats.downstream_rq_idle_timeout == 1


async def test_the_snapshot_sets_the_stream_idle_timeout(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    snapshot = make_snapshot(echo_app.port)
    snapshot["mesh"] = {"path_normalization": "BASE", "stream_idle_timeout_ms": 1000}
    proxy = await start_proxy(snapshot)  # the flag keeps its 300 s default
    conn = await RawConnection.open(proxy.ports["outbound"])
    await conn.send(b"POST /up HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert await conn.closed_by_peer(wait=15)
    assert proxy.listeners["outbound"].stats.downstream_rq_idle_timeout == 1


async def test_a_body_that_keeps_coming_is_not_cut(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port), "--stream-idle-timeout", "5")
    listener = proxy.listeners["outbound"]
    conn = await RawConnection.open(proxy.ports["outbound"])
    await conn.send(b"POST /upload HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5\r\n\r\n")
    await _poll(lambda: len(listener.connections) == 1)
    downstream = _only_connection(listener)
    await _poll(lambda: downstream.current is not None)
    for part in (b"a", b"b", b"c", b"d"):  # the sweep runs 4.9 s "later" each time: 19.6 s in all
        seen = downstream.last_activity
        await conn.send(part)
        await _poll(lambda: downstream.last_activity != seen)  # noqa: B023 - polled at once
        listener.sweep(downstream.last_activity + 4.9)
        assert not downstream.closed
    await conn.send(b"e")
    assert (await conn.response()).status == 200
    assert listener.stats.downstream_rq_idle_timeout == 0
    await conn.close()


def _only_connection(listener: Listener) -> DownstreamConnection:
    (conn,) = listener.connections
    return conn


async def _flood_without_reading(listener: Listener, port: int, request: bytes) -> int:
    """Pipeline PIPELINED requests and never read; return the proxy's buffered bytes once it stalls."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    _, writer = await asyncio.open_connection(sock=sock)
    stats = listener.stats
    before = stats.downstream_rq_total
    writer.write(request * PIPELINED)  # no drain: the proxy may stop reading us, and should
    try:
        await _poll(lambda: len(listener.connections) == 1)
        conn = _only_connection(listener)

        def stalled() -> bool:
            # The client's socket buffers are full; the proxy either stopped serving it
            # (back-pressure) or answered every request into its own memory.
            if conn.active is not None or stats.downstream_rq_total == before:
                return False
            return bool(conn._write_paused and conn.queue) or (
                stats.downstream_rq_total - before == PIPELINED and not conn.queue
            )

        await _poll(stalled)
        assert conn.transport is not None
        return int(conn.transport.get_write_buffer_size())
    finally:
        writer.transport.abort()


async def test_a_client_that_never_reads_cannot_grow_the_sidecar(
    echo_app: EchoApp, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))
    listener = proxy.listeners["outbound"]
    request = b"GET /bytes/%d HTTP/1.1\r\nHost: reviews\r\n\r\n" % RESPONSE_BYTES
    buffered = await _flood_without_reading(listener, proxy.ports["outbound"], request)
    # Before back-pressure: every answer was queued in the transport (150 x 200 KB = 30 MB).
    assert buffered <= 64 * 1024 + 2 * RESPONSE_BYTES, buffered


async def test_the_admin_port_applies_back_pressure_too(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    snapshot = make_snapshot(echo_app.port)
    snapshot["node"]["labels"]["padding"] = "p" * 150_000  # a /config_dump page of ~150 KB
    proxy = await start_proxy(snapshot)
    size = len(await _admin_get(proxy.ports["admin"], b"/config_dump"))
    request = b"GET /config_dump HTTP/1.1\r\nHost: admin\r\n\r\n"
    buffered = await _flood_without_reading(proxy.admin_listener, proxy.ports["admin"], request)
    assert buffered <= 64 * 1024 + 2 * size, (buffered, size)


async def _admin_get(port: int, path: bytes) -> bytes:
    conn = await RawConnection.open(port)
    await conn.send(b"GET %s HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n" % path)
    response = await conn.response()
    await conn.close()
    assert response.status == 200
    return response.body
