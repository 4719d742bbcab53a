"""A gateway's ``ISTIO_MUTUAL`` servers: the mesh's mutual TLS terminated on the gateway's listener.

Istio's "Egress Gateways with TLS Origination" task sends a sidecar's plain HTTP to the egress gateway
over Istio mutual TLS: the sidecar's DestinationRule subset says ``tls.mode: ISTIO_MUTUAL`` with
``sni: edition.cnn.com``, the Gateway's server says ``tls.mode: ISTIO_MUTUAL`` for that host. The
snapshot's ``gateway_tls.istio_mutual`` = ``{"servers": [{"gateway", "server", "port", "hosts"}],
"plaintext": bool}`` lists those servers (docs/snapshot.md).

On the gateway's plain listener (``tunnel.SniffingAcceptor``), a TLS connection whose ClientHello
names one of those hosts is handed here (`accept`) instead of the PASSTHROUGH tunnel: the handshake
uses the gateway's own workload certificate (``certificates.server_context``, which requires a client
certificate chained to the mesh root), the peer's SPIFFE id is taken (none: the connection is
aborted), and the HTTP requests on it go through the gateway's routing with ``request.peer_identity``
set, as Envoy's filter chain matched on ``server_names`` with Istio's mutual TLS transport socket.
With ``plaintext: false`` (ISTIO_MUTUAL servers are the gateway's only HTTP servers) a plaintext
caller is refused before any byte is read, as Envoy resets a connection no filter chain takes.
Counters (admin ``/stats`` -> ``gateway_mtls``): accepted, handshake failures, plaintext refused.

It must not do: PASSTHROUGH tunnels (``tunnel``), Secret-backed HTTPS servers (``serving``), routing,
or anything but the standard library.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import asdict, dataclass
from typing import Any, Protocol, cast

from meshkit.proxy.listener import DownstreamConnection, Listener
from meshkit.proxy.sni import name_matches
from meshkit.proxy.tls.certinfo import CertificateError
from meshkit.proxy.tls.contexts import peer_identity

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0


class ServerContexts(Protocol):
    @property
    def server_context(self) -> ssl.SSLContext: ...


@dataclass
class MutualStats:
    """The gateway listener's mutual TLS counters (admin ``/stats`` -> ``gateway_mtls``)."""

    mtls_accepted: int = 0
    handshake_failed: int = 0  # no client certificate, another CA, not TLS after all
    no_identity_refused: int = 0
    no_certificate_yet: int = 0  # the gateway has no workload certificate (yet)
    plaintext_refused: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class MutualServers:
    """The snapshot's ``gateway_tls.istio_mutual``, checked."""

    hosts: tuple[str, ...]
    plaintext: bool

    @classmethod
    def from_snapshot(cls, section: Any) -> MutualServers:
        where = "gateway_tls.istio_mutual"
        if not isinstance(section, dict) or not isinstance(section.get("servers"), list):
            raise ValueError(f"{where}: expected {{\"servers\": [...], \"plaintext\": bool}}, "
                             f"got {section!r}")
        plaintext = section.get("plaintext", True)
        if not isinstance(plaintext, bool):
            raise ValueError(f"{where}.plaintext: expected true or false, got {plaintext!r}")
        hosts: list[str] = []
        for index, server in enumerate(section["servers"]):
            found = server.get("hosts") if isinstance(server, dict) else None
            if not isinstance(found, list) or not found or not all(isinstance(h, str) and h for h in found):
                raise ValueError(f"{where}.servers[{index}].hosts: expected a list of host names, "
                                 f"got {found!r}")
            hosts.extend(h.lower() for h in found)
        return cls(tuple(dict.fromkeys(hosts)), plaintext)

    def covers(self, name: str | None) -> bool:
        """Does one of the servers answer for the SNI ``name`` (``*``, ``*.example.com``, exact)?"""
        lowered = name.lower() if name is not None else None
        return any(pattern == "*" or (lowered is not None and name_matches(pattern, lowered))
                   for pattern in self.hosts)


class MutualConnection(DownstreamConnection):
    """A downstream connection accepted over the mesh's mutual TLS: only with a SPIFFE id."""

    def __init__(self, listener: Listener, stats: MutualStats) -> None:
        super().__init__(listener)
        self.mutual_stats = stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer_identity = peer_identity(transport.get_extra_info("ssl_object"))
        if self.peer_identity is None:
            self.closed = True
            self.mutual_stats.no_identity_refused += 1
            cast(asyncio.Transport, transport).abort()
            return
        self.mutual_stats.mtls_accepted += 1
        super().connection_made(transport)


async def accept(listener: Listener, sock: socket.socket, certificates: ServerContexts | None,
                 stats: MutualStats) -> None:
    """Terminate the mesh's mutual TLS on ``sock`` and serve HTTP on it (see the module docstring)."""
    try:
        context = certificates.server_context if certificates is not None else None
    except CertificateError as exc:  # no workload certificate yet
        log.info("gateway mutual TLS refused: %s", exc)
        context = None
    if context is None:
        stats.no_certificate_yet += 1
        sock.close()
        return
    loop = asyncio.get_running_loop()
    try:
        await loop.connect_accepted_socket(lambda: MutualConnection(listener, stats), sock, ssl=context,
                                           ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        stats.handshake_failed += 1
        log.info("gateway mutual TLS handshake failed: %s", exc)
        sock.close()


def refuse_plaintext(sock: socket.socket, stats: MutualStats) -> None:
    """A plaintext caller where only mutual TLS is served: closed unread (Envoy: no filter chain)."""
    stats.plaintext_refused += 1
    sock.close()
