"""HTTP/1.1 edge cases through the real outbound listener, with raw sockets on both sides."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot
from tests.proxy.rawhttp import RawConnection

GET = b"GET %s HTTP/1.1\r\nHost: reviews\r\n\r\n"


def _seen(body: bytes) -> dict[str, str]:
    return dict(json.loads(body)["headers"])


@pytest.fixture
async def outbound(echo_app: EchoApp, start_proxy: StartProxy) -> int:
    proxy = await start_proxy(make_snapshot(echo_app.port), "--max-request-body", "100000")
    return int(proxy.ports["outbound"])


async def test_pipelined_requests_answered_in_order(outbound: int) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(GET % b"/slow/300" + GET % b"/fast" + GET % b"/slow/50" + GET % b"/last")
    paths = [json.loads((await conn.response()).body)["path"] for _ in range(4)]
    assert paths == ["/slow/300", "/fast", "/slow/50", "/last"]
    await conn.close()


async def test_head_204_have_no_body_and_keep_the_connection(outbound: int) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(b"HEAD /bytes/1234 HTTP/1.1\r\nHost: reviews\r\n\r\n")
    head = await conn.response(head_request=True)
    assert head.status == 200 and head.header("content-length") == "1234"
    await conn.send(b"GET /nocontent HTTP/1.1\r\nHost: reviews\r\n\r\n")
    empty = await conn.response()
    assert empty.status == 204 and empty.header("content-length") is None
    await conn.send(GET % b"/after")  # framing intact: the next answer is the right one
    assert json.loads((await conn.response()).body)["path"] == "/after"
    await conn.close()


async def test_connection_close_and_http10(outbound: int) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(b"GET /a HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
    response = await conn.response()
    assert response.status == 200 and response.header("connection") == "close"
    assert await conn.closed_by_peer()
    conn = await RawConnection.open(outbound)
    await conn.send(b"GET /b HTTP/1.0\r\nHost: reviews\r\n\r\n")
    assert (await conn.response()).status == 200
    assert await conn.closed_by_peer()
    conn = await RawConnection.open(outbound)  # HTTP/1.0 keep-alive is honoured too
    await conn.send(b"GET /c HTTP/1.0\r\nHost: reviews\r\nConnection: keep-alive\r\n\r\n")
    response = await conn.response()
    assert response.header("connection") == "keep-alive"
    await conn.send(b"GET /d HTTP/1.0\r\nHost: reviews\r\nConnection: keep-alive\r\n\r\n")
    assert json.loads((await conn.response()).body)["path"] == "/d"
    await conn.close()


async def test_expect_100_continue(outbound: int) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(
        b"POST /upload HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await conn.response()
    assert interim.status == 100
    await conn.send(b"z" * 5000)
    final = await conn.response()
    assert final.status == 200
    info = json.loads(final.body)
    assert info["body_len"] == 5000
    assert "expect" not in dict(info["headers"])
    await conn.close()


async def test_hop_by_hop_headers_are_stripped_and_xff_appended(outbound: int) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(
        b"GET /h HTTP/1.1\r\nHost: reviews\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x\r\nProxy-Authorization: Basic Zm9v\r\n"
        b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Forwarded-For: 10.0.0.1\r\n"
        b"X-Forwarded-Proto: https\r\nX-Kept: yes\r\n\r\n"
    )
    response = await conn.response()
    seen = _seen(response.body)
    for name in ("connection", "x-private", "keep-alive", "te", "trailer", "proxy-authorization",
                 "proxy-connection", "upgrade"):
        assert name not in seen, name
    assert seen["x-kept"] == "yes"
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    await conn.close()


async def test_oversized_head_gets_431(outbound: int) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(b"GET / HTTP/1.1\r\nHost: reviews\r\nX-Big: " + b"a" * (61 * 1024) + b"\r\n\r\n")
    response = await conn.response()
    assert response.status == 431
    assert await conn.closed_by_peer()


async def test_oversized_body_gets_413(outbound: int) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(b"POST / HTTP/1.1\r\nHost: reviews\r\nContent-Length: 200000\r\n\r\n" + b"b" * 1000)
    response = await conn.response()
    assert response.status == 413
    assert await conn.closed_by_peer()
    # A chunked body that grows past the limit is cut off too (connection closed).
    conn = await RawConnection.open(outbound)
    await conn.send(b"POST /echo HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(30):
        with contextlib.suppress(ConnectionError):
            await conn.send(b"2710\r\n" + b"c" * 10000 + b"\r\n")
    assert await conn.closed_by_peer()


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: reviews\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST / HTTP/1.1\r\nHost: reviews\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    ],
)
async def test_malformed_requests_get_400_and_close(outbound: int, garbage: bytes) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(garbage)
    response = await conn.response()
    assert response.status == 400
    assert await conn.closed_by_peer()
    conn = await RawConnection.open(outbound)  # and the proxy still serves
    await conn.send(GET % b"/ok")
    assert (await conn.response()).status == 200
    await conn.close()


async def test_error_after_pipelined_request_keeps_order(outbound: int) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(GET % b"/slow/100" + b"BROKEN\r\n\r\n")
    first = await conn.response()
    assert first.status == 200 and json.loads(first.body)["path"] == "/slow/100"
    assert (await conn.response()).status == 400
    assert await conn.closed_by_peer()


async def test_header_and_idle_timeouts(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))
    limits = proxy.listeners["outbound"].limits
    limits.header_timeout = 0.2
    limits.idle_timeout = 0.2
    port = proxy.ports["outbound"]
    slow = await RawConnection.open(port)
    await slow.send(b"GET / HTTP/1.1\r\nHost: rev")  # never finishes its head
    assert (await slow.response(wait=8)).status == 408
    assert await slow.closed_by_peer()
    idle = await RawConnection.open(port)
    await idle.send(GET % b"/once")
    assert (await idle.response()).status == 200
    assert await idle.closed_by_peer(wait=8)  # closed after idling, no response needed


Server = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Server], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Server) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()


async def test_bad_upstream_framing_is_502_upe(start_proxy: StartProxy, raw_upstream) -> None:
    answers = iter([
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ])

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(next(answers))
            await writer.drain()

    port = await raw_upstream(handler)
    proxy = await start_proxy(make_snapshot(port))
    conn = await RawConnection.open(proxy.ports["outbound"])
    await conn.send(GET % b"/bad")
    bad = await conn.response()
    assert bad.status == 502 and b"protocol error" in bad.body
    await conn.send(GET % b"/good")  # a fresh upstream connection, same downstream one
    good = await conn.response()
    assert good.status == 200 and good.body == b"ok"
    await conn.close()


async def test_upstream_reset_and_refused(start_proxy: StartProxy, raw_upstream) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    port = await raw_upstream(reset)
    proxy = await start_proxy(make_snapshot(port))
    conn = await RawConnection.open(proxy.ports["outbound"])
    await conn.send(GET % b"/x")
    response = await conn.response()
    assert response.status == 503 and b"reset" in response.body
    refused = await start_proxy(make_snapshot(1))  # nothing listens on port 1
    conn2 = await RawConnection.open(refused.ports["outbound"])
    await conn2.send(GET % b"/x")
    response = await conn2.response()
    assert response.status == 503 and b"connect" in response.body
    text = refused.metrics.render()
    assert 'response_flags="UF' in text
    await conn.close()
    await conn2.close()


async def test_close_delimited_and_chunked_upstream_bodies(start_proxy: StartProxy, raw_upstream) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/close" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"d" * 100_000)
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    port = await raw_upstream(handler)
    proxy = await start_proxy(make_snapshot(port))
    conn = await RawConnection.open(proxy.ports["outbound"])
    await conn.send(GET % b"/close")
    response = await conn.response()
    assert response.status == 200 and response.body == b"d" * 100_000
    await conn.send(GET % b"/chunked")
    response = await conn.response()
    assert response.body == b"hello"
    await conn.close()


async def test_cluster_connect_timeout_is_honoured(start_proxy: StartProxy) -> None:
    """A listener whose accept queue is full drops SYNs: the connect hangs until the cluster's timeout."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    await asyncio.sleep(0.2)
    snapshot = make_snapshot(port)
    for name in snapshot["clusters"]:
        snapshot["clusters"][name]["connection_pool"] = {"connect_timeout_ms": 300}
    proxy = await start_proxy(snapshot)
    try:
        conn = await RawConnection.open(proxy.ports["outbound"])
        started = asyncio.get_running_loop().time()
        await conn.send(GET % b"/x")
        response = await conn.response(wait=8)
        elapsed = asyncio.get_running_loop().time() - started
        assert response.status == 503 and b"connect timeout" in response.body
        assert elapsed > 0.25  # the 300 ms connect timeout fired
        await conn.close()
    finally:
        for sock in [*fillers, blackhole]:
            sock.close()


async def test_half_closed_client_is_a_closed_client(outbound: int) -> None:
    """Envoy's connection manager has no HTTP half-close: a FIN ends the connection and the
    requests in flight (reset, DC), the complete one as well as the incomplete one."""
    conn = await RawConnection.open(outbound)
    partial = b"POST /echo HTTP/1.1\r\nHost: reviews\r\nContent-Length: 10\r\n\r\nabc"
    await conn.send(GET % b"/slow/200" + partial)
    conn.writer.write_eof()
    async with asyncio.timeout(10):
        assert await conn.reader.read() == b""  # closed with no answer, not left hanging


async def test_a_failing_handler_gets_500_not_silence(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))

    async def broken(request: object) -> object:
        raise RuntimeError("a bug in some filter")

    proxy.listeners["outbound"].handler = broken  # type: ignore[assignment]
    conn = await RawConnection.open(proxy.ports["outbound"])
    await conn.send(GET % b"/x")
    response = await conn.response()
    assert response.status == 500 and response.header("connection") == "close"
    assert await conn.closed_by_peer()


async def test_http10_client_gets_a_close_delimited_stream(outbound: int) -> None:
    conn = await RawConnection.open(outbound)
    await conn.send(b"GET /stream/5 HTTP/1.0\r\nHost: reviews\r\n\r\n")
    response = await conn.response()  # no length, not chunked: read until close
    assert response.header("transfer-encoding") is None and response.header("connection") == "close"
    assert len(response.body) == 5 * 1024 and response.body[:5] == b"00000"


async def test_upstream_response_headers_any_spelling(start_proxy: StartProxy, raw_upstream) -> None:
    # The upstream parser maps common names through a table (both spellings) and drops
    # hop-by-hop ones; uncommon or odd-cased names take the general path. Same result for all.
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(
                    b"HTTP/1.1 200 OK\r\nServer: nginx\r\ndate: Thu, 26 Nov 2026 03:00:00 GMT\r\n"
                    b"CONTENT-TYPE: text/plain\r\nX-Custom: One\r\nConnection: keep-alive\r\n"
                    b"keep-alive: timeout=5\r\nContent-Length: 2\r\n\r\nok"
                )
                await writer.drain()

    port = await raw_upstream(handler)
    proxy = await start_proxy(make_snapshot(port))
    conn = await RawConnection.open(proxy.ports["outbound"])
    for path in (b"/one", b"/two"):
        await conn.send(GET % path)
        response = await conn.response()
        assert response.status == 200 and response.body == b"ok"
        names = [name for name, _ in response.headers]
        assert response.header("server") == "nginx"
        assert response.header("date") == "Thu, 26 Nov 2026 03:00:00 GMT"
        assert response.header("content-type") == "text/plain"
        assert response.header("x-custom") == "One"
        assert "keep-alive" not in names and "connection" not in names
        assert names.count("content-length") == 1 and response.header("content-length") == "2"
    assert connections == 1  # the upstream connection was kept alive and reused
    await conn.close()


async def test_request_headers_any_spelling_reach_the_filters(outbound: int) -> None:
    # Common request names are mapped through a table (both spellings), the rest lower-cased:
    # the filters must find them either way (tracing keeps the caller's ids, adds no second one).
    trace_id, span_id = "0cbfdfc21c274e4aa8802880830cdda0", "0cbfdfc21c274e4a"
    conn = await RawConnection.open(outbound)
    await conn.send(
        b"GET /ids HTTP/1.1\r\nHost: reviews\r\nX-Request-Id: caller-id-1\r\nUser-Agent: UA/1\r\n"
        + f"X-B3-Traceid: {trace_id}\r\nx-b3-spanid: {span_id}\r\nX-B3-SAMPLED: 1\r\n".encode()
        + b"X-Odd-Name: kept\r\n\r\n"
    )
    response = await conn.response()
    assert response.status == 200
    seen = json.loads(response.body)["headers"]
    assert [v for k, v in seen if k == "x-request-id"] == ["caller-id-1"]
    assert [v for k, v in seen if k == "user-agent"] == ["UA/1"]
    assert [v for k, v in seen if k == "x-b3-traceid"] == [trace_id]
    assert [v for k, v in seen if k == "x-b3-parentspanid"] == [span_id]
    assert [v for k, v in seen if k == "x-odd-name"] == ["kept"]
    await conn.close()
