"""Downstream listeners: a port, how its connections are accepted, and how they are drained.

One ``Listener`` serves one port (outbound, inbound, admin, a gateway's) with one handler (the
filter chain): it binds (or takes a ``--concurrency`` worker's bound socket), lets an ``Acceptor``
accept for it where the connection's kind needs deciding first (mTLS, ``tls.inbound``; a gateway's
TLS, ``tls.serving``; a captured pod's original destination, ``passthrough``), picks the connection
protocol (``DownstreamConnection``, or ``proxied.ProxyProtocolConnection`` while the snapshot asks
for a PROXY protocol header), sweeps its connections' timeouts once a second, and closes them
gracefully. ``ListenerLimits`` and the ``SnapshotSource``/``Serving``/``Acceptor`` protocols are the
seams other modules plug into.

This is the module the rest of the sidecar imports: it also exports ``DownstreamConnection`` (the
HTTP/1.1 connection protocol itself, ``downstream``). Must not: parse or serve requests (that is
``downstream``), hold per-request state, or import the TLS modules (they import it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from meshkit.proxy.downstream import DownstreamConnection
from meshkit.proxy.http import Handler
from meshkit.proxy.request_head import origin_form as _origin_form
from meshkit.proxy.stats import ProxyStats

if TYPE_CHECKING:  # types only: the snapshot module imports the filters, which import this one
    import socket

    from meshkit.proxy.snapshot import Snapshot
    from meshkit.proxy.tunnel import Tunnels

__all__ = ["Acceptor", "DownstreamConnection", "Listener", "ListenerLimits", "Serving", "SnapshotSource",
           "_origin_form"]


class SnapshotSource(Protocol):
    """Where a listener finds the snapshot in effect (``xds.ConfigState``)."""

    current: Snapshot | None


class Serving(Protocol):
    """A listening server: asyncio's, or the mTLS acceptor's own (``tls.inbound``)."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Acceptor(Protocol):
    """The mTLS seam: accepts a listener's connections itself (``tls.inbound.MtlsAcceptor``)."""

    async def serve(
        self, listener: Listener, host: str, port: int, sock: socket.socket | None = None
    ) -> Serving: ...


@dataclass
class ListenerLimits:
    """Protection limits of a listener (Envoy-like defaults, smaller where a classroom wants it)."""

    max_header_bytes: int = 60 * 1024  # request line + headers; above -> 431
    max_body_bytes: int = 64 * 1024 * 1024  # declared or streamed request body; above -> 413
    buffer_limit: int = 64 * 1024  # Content-Length bodies up to this are buffered as bytes
    header_timeout: float = 10.0  # time to receive a complete request head -> 408
    idle_timeout: float = 300.0  # keep-alive connection with no request in flight -> closed
    # Envoy's stream_idle_timeout (default 5 min): a request whose body stops arriving for this
    # long is ended with 408 (flag SI) and the connection closed. The snapshot's
    # ``mesh.stream_idle_timeout_ms`` overrides it for sidecar listeners.
    stream_idle_timeout: float = 300.0


class Listener:
    """A port and its open connections; ``handler`` is the filter chain for its requests."""

    def __init__(
        self,
        direction: str,
        handler: Handler,
        state: SnapshotSource | None = None,
        limits: ListenerLimits | None = None,
        stats: ProxyStats | None = None,
    ) -> None:
        self.direction = direction
        self.handler = handler
        self.state = state  # an object whose ``.current`` is the Snapshot in effect (None: no config needed)
        self.limits = limits or ListenerLimits()
        self.stats = stats or ProxyStats()
        self.connections: set[DownstreamConnection] = set()
        self.server: Serving | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # mTLS seam (meshkit.proxy.tls.inbound): accepts connections itself, sniffing TLS vs plaintext.
        self.acceptor: Acceptor | None = None
        self.scheme = "http"  # x-forwarded-proto when the client sent none ("https": a gateway's TLS port)
        # CONNECT (an app's own TLS through its sidecar): tunnel.Tunnels takes the connection over
        self.tunnels: Tunnels | None = None
        # inbound, for an opaque-TCP workload (snapshot inbound.protocol "tcp"): bytes to the app
        self.tcp_relay: Tunnels | None = None
        # A gateway's traffic listeners: connections must start with a PROXY protocol header while
        # the snapshot says so (Istio's gatewayTopology.proxyProtocol). Decided once per connection.
        self.proxy_protocol_capable = False

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Listen on ``host:port``, or on ``sock`` already bound (a ``--concurrency`` worker's)."""
        loop = asyncio.get_running_loop()
        if self.acceptor is not None:
            self.server = await self.acceptor.serve(self, host, port, sock)
        elif sock is not None:
            self.server = await loop.create_server(self.protocol_factory(), sock=sock, backlog=1024)
        else:
            self.server = await loop.create_server(self.protocol_factory(), host, port, backlog=1024)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())
        return int(self.server.sockets[0].getsockname()[1])

    def protocol_factory(self) -> Callable[[], DownstreamConnection]:
        """What makes this listener's connection protocols: a plain one, unless the listener may need
        a PROXY protocol header (then the snapshot in effect decides, per accepted connection)."""
        if not self.proxy_protocol_capable:
            return lambda: DownstreamConnection(self)
        return self._maybe_proxied

    def _maybe_proxied(self) -> DownstreamConnection:
        if self.proxy_protocol_required():
            # loaded the first time a snapshot asks for it: a proxy without it never imports it
            from meshkit.proxy.proxied import ProxyProtocolConnection  # noqa: PLC0415

            return ProxyProtocolConnection(self)
        return DownstreamConnection(self)

    def proxy_protocol_required(self) -> bool:
        config = self.state.current if self.state is not None else None
        return bool(getattr(config, "proxy_protocol", False))

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        for conn in list(self.connections):
            conn.check_timeouts(now)

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, then close."""
        if self.server is not None:
            self.server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close_when_idle()
        for _ in range(max(1, int(grace / 0.02))):
            if not self.connections:
                break
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
