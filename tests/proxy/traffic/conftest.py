"""Fixtures for the traffic-filter tests: real HTTP/1.1 backends on 127.0.0.1 that fail on demand.

``Backend`` is a tiny keep-alive HTTP/1.1 server (stdlib asyncio) whose next answers are
scripted: a status, a delay, or dropping the connection before any byte of a response (a
reset). It records every request it saw and the connections it lost, so tests can check what
the sidecar really sent upstream and that a timed-out connection was discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshkit.proxy.balancer import Cluster
from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.circuit_breaker import circuit_breaker
from meshkit.proxy.filters.fault import fault
from meshkit.proxy.filters.loadbalance import loadbalance
from meshkit.proxy.filters.mirror import mirror
from meshkit.proxy.filters.ratelimit import TokenBucket
from meshkit.proxy.filters.retry import retry
from meshkit.proxy.filters.timeout import timeout
from meshkit.proxy.http import ConnectFailure, Headers, Request, Response, UpstreamReset


@dataclass
class Action:
    status: int = 200
    delay: float = 0.0
    reset: bool = False  # close the connection instead of answering
    body: bytes = b"ok"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Backend:
    """One scripted upstream server; ``port`` is known once ``start`` returned."""

    name: str
    default: Action = field(default_factory=Action)
    script: deque[Action] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    connections_opened: int = 0
    connections_lost: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    def then(self, *actions: Action) -> Backend:
        self.script.extend(actions)
        return self

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_opened += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                self.seen.append(Seen(method, path, headers, body))
                action = self.script.popleft() if self.script else self.default
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    if action.delay and await self._client_left_within(reader, action.delay):
                        return  # the client dropped the connection while we were "working"
                finally:
                    self.active -= 1
                if action.reset:
                    writer.transport.abort()
                    return
                payload = action.body + b" from " + self.name.encode()
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-backend: %s\r\n\r\n%s"
                    % (action.status, len(payload), self.name.encode(), payload)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.connections_lost += 1
            writer.close()

    @staticmethod
    async def _client_left_within(reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait ``seconds``, noticing at once if the client closes the connection meanwhile."""
        eof = asyncio.ensure_future(reader.read(1))
        done, _ = await asyncio.wait({eof}, timeout=seconds)
        if not done:
            eof.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await eof
            return False
        return eof.result() == b""


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[list[Backend]]]]:
    """``await backends("a", "b")`` starts scripted servers, stopped at teardown."""
    started: list[Backend] = []

    async def make(*names: str) -> list[Backend]:
        made = []
        for name in names:
            backend = Backend(name)
            await backend.start()
            started.append(backend)
            made.append(backend)
        return made

    yield make
    for backend in started:
        await backend.stop()


def free_port() -> int:
    """A port nothing listens on (bound then released), for connect failures."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_spec(ports: list[int], lb: str = "ROUND_ROBIN", **policy: Any) -> dict[str, Any]:
    return {
        "service": "svc",
        "subset": "",
        "port": 80,
        "lb": lb,
        "endpoints": [
            {"address": "127.0.0.1", "port": p, "instance": f"svc-{i}", "workload": "svc", "version": "v1"}
            for i, p in enumerate(ports)
        ],
        "connection_pool": policy.get("connection_pool"),
        "outlier_detection": policy.get("outlier_detection"),
        "tls": None,
    }


class Config:
    """The two things the traffic filters read from the runtime snapshot, built the same way.

    (PROXY-CORE's ``Snapshot`` builds ``clusters`` with ``Cluster.from_snapshot`` and
    ``rate_limiter`` with ``TokenBucket.from_snapshot``; the end-to-end tests use the real one.)
    """

    def __init__(self, clusters: dict[str, dict[str, Any]], rate_limit: dict[str, Any] | None = None) -> None:
        self.clusters = {name: Cluster.from_snapshot(name, spec) for name, spec in clusters.items()}
        self.rate_limiter = TokenBucket.from_snapshot(rate_limit)


def make_request(
    config: Config,
    route: dict[str, Any] | None,
    cluster: str = "svc|",
    *,
    body: Any = b"",
    method: str = "GET",
    authority: str = "svc:80",
) -> Request:
    request = Request(
        method, "/path", authority, Headers([("host", authority)]), body, config=config
    )
    request.route = route
    request.cluster = cluster
    return request


async def plain_send(request: Request) -> Response:
    """A minimal terminal: one fresh HTTP/1.1 connection per attempt to ``request.endpoint``.

    Stands in for PROXY-CORE's pooled ``upstream.send`` in the filter-level tests; it raises the
    same ``ConnectFailure`` / ``UpstreamReset`` and closes its connection when cancelled.
    """
    endpoint = request.endpoint
    try:
        reader, writer = await asyncio.open_connection(endpoint.address, endpoint.port)
    except OSError as exc:
        raise ConnectFailure(f"connect to {endpoint.hostport} failed: {exc}") from exc
    try:
        body = request.body if isinstance(request.body, bytes) else b"".join([c async for c in request.body])
        head = f"{request.method} {request.path} HTTP/1.1\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in request.headers)
        head += f"content-length: {len(body)}\r\n\r\n"
        writer.write(head.encode("latin-1") + body)
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise UpstreamReset(f"{endpoint.hostport} closed before a response") from exc
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = Headers()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip().lower(), value.strip())
        payload = await reader.readexactly(int(headers.get("content-length") or 0))
        return Response(status, headers, payload, upstream_host=endpoint.hostport)
    finally:
        writer.close()


def outbound_chain() -> Any:
    """The traffic half of the outbound chain, in pipeline order, ending at ``plain_send``."""
    return build_chain([fault, mirror, timeout, retry, circuit_breaker, loadbalance], plain_send)
