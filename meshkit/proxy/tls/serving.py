"""The ingress gateway's HTTPS listener: Gateway servers with ``tls.mode: SIMPLE``, chosen by SNI.

The snapshot's ``gateway_tls.servers`` (gateway proxies only) are loaded by ``servercerts`` into
one server ``SSLContext`` each.

``GatewayTlsAcceptor`` serves a ``Listener`` over TLS: a new connection's ClientHello names a host
(SNI) and the SNI callback switches the handshake to the context of the first server whose hosts
cover it (exact, ``*.example.com``, ``*``), as Envoy's filter chain match on ``server_names`` does;
no match (or no SNI and no ``*`` server) fails the handshake, as Envoy resets a connection no
filter chain takes. The servers are those of the snapshot in effect at the handshake, so a
rotated Secret (deleted and created again) serves its new certificate to new connections.
Requests on it then go through the gateway's routing like those of the HTTP listener
(``x-forwarded-proto: https``).

``PASSTHROUGH`` servers share the port (Istio's ingress serves both on 443): before any
handshake, the ClientHello's SNI is peeked (``peek_sni``, nothing consumed); when the snapshot's
``tls`` routes take that name (a VirtualService ``tls`` route bound to a PASSTHROUGH server), the
connection goes to a tunnel (``tunnel.Tunnels.accept``) that carries the client's TLS, unopened, to
the route's destination ("Ingress Gateway without TLS Termination"); otherwise the gateway
terminates it as above.

With PROXY protocol on (the snapshot's ``mesh.proxy_protocol``, Istio's
``gatewayTopology.proxyProtocol``) the header comes before the ClientHello, as Envoy's listener
filter reads it before the TLS inspector: `proxied.read_proxy_header` takes exactly the header's bytes off
the socket (peeking, so no TLS byte is consumed), then the handshake starts; a missing or
malformed header closes the socket. Connections are accepted by the sidecar's own accept loop
(``accept_loop``) for that reason, with or without PROXY protocol.

It must not do: client TLS (``originate``), mutual TLS (``inbound``), carry bytes (``tunnel``), or
anything but the standard library.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any, Protocol

from meshkit.proxy import accept_loop
from meshkit.proxy.listener import DownstreamConnection, Listener
from meshkit.proxy.proxy_protocol import ProxyHeader, ProxyProtocolError
from meshkit.proxy.tls.servercerts import ServerCertificate
from meshkit.proxy.tls.sniff import peek_sni

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
PASSTHROUGH_PORT = 443  # the port a passthrough route's match names (Istio's ingress HTTPS port)


class SnapshotSource(Protocol):
    @property
    def current(self) -> Any: ...


class GatewayTlsAcceptor:
    """Serves a Listener over TLS with the certificate the SNI selects (see the module docstring)."""

    def __init__(self, state: SnapshotSource, tunnels: Any = None) -> None:
        self.state = state
        self.tunnels = tunnels  # PASSTHROUGH servers' connections (tunnel.Tunnels), or None
        self.handshakes_refused = 0  # no server for the client's SNI (admin /stats: "gateway_tls")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        self.context.sni_callback = self._choose

    def _servers(self) -> Sequence[ServerCertificate]:
        snapshot = self.state.current
        return getattr(snapshot, "gateway_tls", None) or ()

    def _choose(self, ssl_object: Any, server_name: str | None, _context: ssl.SSLContext) -> int | None:
        name = server_name.lower() if server_name else None
        for server in self._servers():
            if server.covers(name):
                ssl_object.context = server.context
                return None
        self.handshakes_refused += 1
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

    async def serve(self, listener: Listener, host: str, port: int, sock: socket.socket | None = None) -> Any:
        async def admit(sock: socket.socket) -> None:
            await self._admit(listener, sock)

        return accept_loop.serve(host, port, admit, "gateway https", sock)

    async def _admit(self, listener: Listener, sock: socket.socket) -> None:
        header: ProxyHeader | None = None
        if listener.proxy_protocol_required():
            from meshkit.proxy.proxied import PROXY_HEADER_TIMEOUT, read_proxy_header  # noqa: PLC0415

            try:
                async with asyncio.timeout(PROXY_HEADER_TIMEOUT):
                    header = await read_proxy_header(sock)
            except (ProxyProtocolError, TimeoutError, OSError) as exc:
                listener.stats.downstream_cx_proxy_proto_error += 1
                log.debug("closing a gateway TLS connection: %s", exc)
                sock.close()
                return
        if self.tunnels is not None and await self._passthrough(sock):
            await self.tunnels.accept(sock, header)
            return
        loop = asyncio.get_running_loop()
        factory: Any = lambda: DownstreamConnection(listener)  # noqa: E731
        if header is not None:
            from meshkit.proxy.proxied import ProxyProtocolConnection  # noqa: PLC0415

            factory = lambda: ProxyProtocolConnection(listener, header)  # noqa: E731
        try:
            await loop.connect_accepted_socket(
                factory,
                sock, ssl=self.context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            log.debug("gateway TLS handshake failed: %s", exc)
            sock.close()


    async def _passthrough(self, sock: socket.socket) -> bool:
        """Does a ``tls`` route (a PASSTHROUGH server's) take this connection's SNI?"""
        routing = getattr(self.state.current, "tls", None)
        if routing is None or not routing.routes:
            return False
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                name = await peek_sni(sock)
        except (TimeoutError, OSError):
            return False
        return name is not None and routing.route(name, PASSTHROUGH_PORT) is not None
