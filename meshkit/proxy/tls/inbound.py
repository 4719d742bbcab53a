"""The inbound listener's mTLS side: PeerAuthentication applied to every accepted connection.

``MtlsAcceptor`` replaces ``loop.create_server`` for the inbound ``Listener`` of a sidecar
that holds a workload certificate. It accepts raw sockets itself and, per connection:

1. reads the port's mode from the snapshot in effect (``Snapshot.mtls_mode``: STRICT,
   PERMISSIVE or DISABLE; PERMISSIVE before the first snapshot);
2. peeks at the first bytes (``sniff_tls``, nothing consumed) to tell a TLS ClientHello from
   plaintext HTTP (needed for PERMISSIVE; done in every mode so refusals are counted by kind);
3. refuses plaintext under STRICT and TLS under DISABLE before any handshake (the socket
   is closed; the caller's sidecar sees a reset and answers 503 UC/UF);
4. hands the socket to ``loop.connect_accepted_socket`` with the CURRENT server context
   (so a rotation affects new connections only), which requires a client certificate that
   chains to the mesh root; a failed handshake (another CA, expired) closes the socket;
5. takes the peer's SPIFFE id and accepts the connection only if it has one; every request
   on it then carries ``request.peer_identity`` (metrics: ``source_principal``,
   ``connection_security_policy="mutual_tls"``; authz: ``source.principal``).

Every refusal is counted in ``TlsStats`` (admin ``/stats`` -> ``"mtls"``). When a new
snapshot changes the mode, open connections the new mode would refuse are closed once
idle, as Envoy drains a listener whose filter chains changed.

It must not do: HTTP (that is ``DownstreamConnection``), or decide policy itself (that is
``filters.authn.decide_connection``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import asdict, dataclass
from typing import Any, Protocol, cast

from meshkit.proxy import accept_loop
from meshkit.proxy.accept_loop import AcceptingServer
from meshkit.proxy.filters.authn import DEFAULT_MODE, decide_connection
from meshkit.proxy.listener import DownstreamConnection, Listener
from meshkit.proxy.tls.certinfo import CertificateError
from meshkit.proxy.tls.contexts import peer_identity
from meshkit.proxy.tls.sniff import sniff_tls

log = logging.getLogger(__name__)

SNIFF_TIMEOUT = 10.0  # a client that connects and sends nothing (Envoy's listener filter timeout is 15 s)
HANDSHAKE_TIMEOUT = 10.0


class ServerContexts(Protocol):
    """Where the server side of mutual TLS comes from (``SidecarCertificates``)."""

    @property
    def server_context(self) -> ssl.SSLContext: ...


@dataclass
class TlsStats:
    """Connection-level counters of the inbound listener (admin ``/stats`` -> ``mtls``)."""

    mtls_accepted: int = 0
    plaintext_accepted: int = 0
    plaintext_refused: int = 0  # STRICT
    tls_refused: int = 0  # DISABLE
    handshake_failed: int = 0  # no client certificate, another CA, expired, not TLS at all
    no_identity_refused: int = 0  # chains to our root but carries no single SPIFFE id
    no_certificate_yet: int = 0  # TLS arrived before this sidecar had its own certificate
    sniff_timeout: int = 0
    closed_on_mode_change: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class MtlsDownstreamConnection(DownstreamConnection):
    """A downstream connection that checks its peer once the handshake is done (step 5)."""

    def __init__(self, listener: Listener, acceptor: MtlsAcceptor, mode: str, is_tls: bool) -> None:
        super().__init__(listener)
        self.acceptor = acceptor
        self.mode = mode
        self.is_tls = is_tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.is_tls:
            self.peer_identity = peer_identity(transport.get_extra_info("ssl_object"))
        decision = decide_connection(self.mode, self.is_tls, self.peer_identity is not None)
        if not decision.accept:
            self.closed = True  # never tracked: connection_lost has nothing to undo
            self.acceptor.stats.no_identity_refused += 1
            log.info("inbound connection refused: %s", decision.reason)
            cast(asyncio.Transport, transport).abort()
            return
        if self.is_tls:
            self.acceptor.stats.mtls_accepted += 1
        else:
            self.acceptor.stats.plaintext_accepted += 1
        super().connection_made(transport)


class MtlsAcceptor:
    """Accepts inbound connections and applies PeerAuthentication (see the module docstring)."""

    def __init__(self, certificates: ServerContexts, stats: TlsStats | None = None) -> None:
        self.certificates = certificates
        self.stats = stats or TlsStats()
        self.listener: Listener | None = None

    async def serve(
        self, listener: Listener, host: str, port: int, sock: socket.socket | None = None
    ) -> AcceptingServer:
        self.listener = listener
        return accept_loop.serve(host, port, lambda conn: self._admit(listener, conn), "inbound", sock)

    def current_mode(self, listener: Listener) -> str:
        state = listener.state
        snapshot = state.current if state is not None else None
        return snapshot.mtls_mode if snapshot is not None else DEFAULT_MODE

    async def _admit(self, listener: Listener, conn: socket.socket) -> None:
        mode = self.current_mode(listener)
        try:
            await self._admit_in_mode(listener, conn, mode)
        except BaseException:
            conn.close()
            raise

    async def _admit_in_mode(self, listener: Listener, conn: socket.socket, mode: str) -> None:
        stats = self.stats
        # Sniffed in every mode (not only PERMISSIVE): a refusal then says what was refused.
        try:
            async with asyncio.timeout(SNIFF_TIMEOUT):
                sniffed = await sniff_tls(conn)
        except TimeoutError:
            stats.sniff_timeout += 1
            conn.close()
            return
        if sniffed is None:  # closed before sending anything
            conn.close()
            return
        is_tls = sniffed
        early = decide_connection(mode, is_tls, has_valid_client_cert=True)
        if not early.accept:
            if is_tls:
                stats.tls_refused += 1
            else:
                stats.plaintext_refused += 1
            log.info("inbound connection refused: %s", early.reason)
            conn.close()
            return
        context: ssl.SSLContext | None = None
        if is_tls:
            try:
                context = self.certificates.server_context
            except CertificateError:
                stats.no_certificate_yet += 1
                conn.close()
                return
        loop = asyncio.get_running_loop()
        relay = listener.tcp_relay
        snapshot = listener.state.current if listener.state is not None else None
        if relay is not None and snapshot is not None and snapshot.inbound.get("protocol") == "tcp":
            await self._relay_tcp(relay, conn, context, mode, is_tls)  # an opaque-TCP app: no HTTP
            return
        try:
            await loop.connect_accepted_socket(
                lambda: MtlsDownstreamConnection(listener, self, mode, is_tls),
                conn,
                ssl=context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context is not None else None,
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            stats.handshake_failed += 1
            log.info("inbound TLS handshake failed: %s", exc)
            conn.close()

    async def _relay_tcp(self, relay: Any, conn: socket.socket, context: ssl.SSLContext | None, mode: str,
                         is_tls: bool) -> None:
        """Step 4-5 for a workload whose Service port is opaque TCP: handshake, check the peer as for
        HTTP, then hand the byte stream to ``tunnel.Tunnels.carry_inbound`` (to the app, unchanged)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context is not None else None)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self.stats.handshake_failed += 1
            log.info("inbound TLS handshake failed: %s", exc)
            conn.close()
            return
        identity = peer_identity(transport.get_extra_info("ssl_object")) if is_tls else None
        decision = decide_connection(mode, is_tls, identity is not None)
        if not decision.accept:
            self.stats.no_identity_refused += 1
            log.info("inbound connection refused: %s", decision.reason)
            transport.abort()
            return
        if is_tls:
            self.stats.mtls_accepted += 1
        else:
            self.stats.plaintext_accepted += 1
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        peer = transport.get_extra_info("peername")
        await relay.carry_inbound(reader, writer, str(peer[0]) if peer else "", identity)

    def on_snapshot(self, snapshot: Any) -> None:
        """Close (once idle) the open connections the new mode would refuse."""
        listener = self.listener
        if listener is None:
            return
        mode = snapshot.mtls_mode
        for conn in list(listener.connections):
            if not isinstance(conn, MtlsDownstreamConnection) or conn.mode == mode:
                continue
            if not decide_connection(mode, conn.is_tls, conn.peer_identity is not None).accept:
                self.stats.closed_on_mode_change += 1
                conn.close_when_idle()
            else:
                conn.mode = mode
