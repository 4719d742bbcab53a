"""Connections that start with a PROXY protocol header (Istio's ``gatewayTopology.proxyProtocol``).

`ProxyProtocolConnection` is the listener's `DownstreamConnection` with the header read first
(`meshkit.proxy.proxy_protocol.parse`); `read_proxy_header` takes a header off a socket before
anything else reads it (the gateway's TLS listener, its passthrough and TCP listeners:
`tls.serving`, `tunnel`); `ProxiedAuthzPolicies` judges ``ipBlocks`` on the socket's
own peer. This module is imported only when a snapshot turns PROXY protocol on (the listener's
protocol factory, the gateway's TLS acceptor, `filters.authz.compile_authz`), so a proxy without it
loads none of it: not even its objects weigh on the garbage collector of a plain sidecar.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from meshkit.proxy.filters.authz import Attributes, AuthzPolicies, Decision
from meshkit.proxy.http import Request
from meshkit.proxy.listener import DownstreamConnection, Listener
from meshkit.proxy.proxy_protocol import ProxyHeader, ProxyProtocolError
from meshkit.proxy.proxy_protocol import parse as parse_proxy_header
from meshkit.proxy.tls.sniff import wait_readable

log = logging.getLogger("meshkit.proxy.listener")


PROXY_HEADER_TIMEOUT = 15.0  # Envoy's listener_filters_timeout default: no header by then -> closed


class ProxyProtocolConnection(DownstreamConnection):
    """A connection that must start with a PROXY protocol header (`meshkit.proxy.proxy_protocol`).

    Only made while the snapshot asks for it (``Listener.protocol_factory``): other connections
    are plain `DownstreamConnection` objects and never pay for this. Until the header is complete,
    bytes are kept in ``_header_bytes``; a missing or malformed header closes the connection with
    no answer, as Envoy does. The header's source becomes ``peer`` (the downstream remote address:
    ``X-Forwarded-For``, ``remote.ip``, logs); ``direct_peer`` stays the socket's peer, which
    AuthorizationPolicy ``ipBlocks`` judge (Envoy's ``direct_remote_ip``).
    """

    def __init__(self, listener: Listener, header: ProxyHeader | None = None) -> None:
        super().__init__(listener)
        # ``header``: already read off the socket before TLS (tls.serving); else read here
        self._header_bytes: bytes | None = b"" if header is None else None
        self._read_header = header
        self.direct_peer = ""
        self.accepted_at = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.direct_peer = self.peer
        if self._read_header is not None and self._read_header.source is not None:
            self.peer = self._read_header.source

    def data_received(self, data: bytes) -> None:
        pending = self._header_bytes
        if pending is None:
            DownstreamConnection.data_received(self, data)
            return
        pending += data
        try:
            header = parse_proxy_header(pending)
        except ProxyProtocolError as exc:
            self.stats.downstream_cx_proxy_proto_error += 1
            log.debug("closing %s: %s", self.direct_peer, exc)
            self._header_bytes = None
            self.input_done = True
            self.abort()
            return
        if header is None:
            self._header_bytes = pending
            return
        self._header_bytes = None
        if header.source is not None:
            self.peer = header.source
        rest = pending[header.length:]
        if rest:
            DownstreamConnection.data_received(self, rest)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        current = self.current
        if current is not None:
            current.request.direct_addr = self.direct_peer

    def check_timeouts(self, now: float) -> None:
        if self._header_bytes is not None:
            if not self.closed and now - self.accepted_at > PROXY_HEADER_TIMEOUT:
                self.stats.downstream_cx_proxy_proto_error += 1
                self._header_bytes = None
                self.abort()
            return
        super().check_timeouts(now)


class ProxiedAuthzPolicies(AuthzPolicies):
    """A gateway whose listeners read a PROXY protocol header (``gatewayTopology.proxyProtocol``):
    ``ipBlocks`` (``source.ip``) judge the socket's own peer, Envoy's ``direct_remote_ip`` ("always
    the physical peer even if the remote_ip is inferred from ... proxy protocol"); ``remoteIpBlocks``
    judge the header's address (``request.downstream_addr``), or X-Forwarded-For as far as trusted.
    A separate class, so that a gateway or sidecar without PROXY protocol runs `AuthzPolicies.evaluate`
    unchanged."""

    __slots__ = ()

    def evaluate(self, request: Request) -> Decision:
        attrs = Attributes.of(request, self.port, self.trusted_hops)
        # absent only on a connection accepted before the snapshot turned PROXY protocol on
        direct = getattr(request, "direct_addr", None)
        if direct is not None:
            attrs.source_ip = direct
        decision = self._enforced(attrs)
        if not (self.dry_run_deny or self.dry_run_allow):
            return decision
        return self._with_shadows(decision, attrs)


async def read_proxy_header(sock: socket.socket) -> ProxyHeader:
    """Take a PROXY protocol header, and nothing after it, off a non-blocking socket.

    Peeks (``MSG_PEEK``) and parses; while the header is incomplete every byte seen belongs to it,
    so those are consumed and the rest awaited; once complete, exactly its remaining bytes are read.
    ProxyProtocolError for a bad header or a peer that closes first; the caller bounds the time.
    """
    taken = b""
    for _ in range(256):  # each turn consumes >= 1 byte of a header of at most 16 + 65535 bytes
        await wait_readable(sock.fileno())
        try:
            seen = sock.recv(65536 + 16, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not seen:
            raise ProxyProtocolError("the connection closed before a PROXY protocol header")
        header = parse_proxy_header(taken + seen)
        if header is not None:
            _recv_exactly(sock, header.length - len(taken))
            return header
        taken += _recv_exactly(sock, len(seen))
    raise ProxyProtocolError("no complete PROXY protocol header")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes already in the socket's buffer (they were peeked)."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ProxyProtocolError("the connection closed inside a PROXY protocol header")
        data += chunk
    return data
