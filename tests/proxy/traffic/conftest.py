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

from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.circuit_breaker import circuit_breaker
from meshkit.proxy.filters.fault import fault
from meshkit.proxy.filters.loadbalance import loadbalance
from meshkit.proxy.filters.mirror import mirror
from meshkit.proxy.filters.retry import retry
from meshkit.proxy.filters.timeout import timeout
from meshkit.proxy.http import Handler, Headers, Request
from meshkit.proxy.snapshot import Snapshot
from meshkit.proxy.upstream import Upstream


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
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    body = await self._read_chunked(reader)
                else:
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
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])

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


def snapshot_with(clusters: dict[str, dict[str, Any]], rate_limit: dict[str, Any] | None = None) -> Snapshot:
    """A real runtime ``Snapshot`` (PROXY-CORE) holding just these clusters and inbound rate limit."""
    doc = {
        "schema": 1,
        "version": "traffic-test",
        "revision": 1,
        "node": None,
        "outbound": {"virtual_hosts": []},
        "clusters": clusters,
        "inbound": {"app": None, "rate_limit": rate_limit},
        "trust": None,
    }
    return Snapshot.from_json(doc)


def make_request(
    config: Snapshot,
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


def outbound_chain(terminal: Handler) -> Handler:
    """The traffic half of the outbound chain, in pipeline order (meshkit.proxy.pipeline)."""
    return build_chain([fault, mirror, timeout, retry, circuit_breaker, loadbalance], terminal)


@pytest.fixture
async def send() -> AsyncIterator[Handler]:
    """PROXY-CORE's real terminal: ``Upstream.send`` with its keep-alive pools, closed at teardown."""
    upstream = Upstream()
    yield upstream.send
    upstream.close()
