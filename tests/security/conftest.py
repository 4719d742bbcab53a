"""Shared pieces for the security tests: a real CA in a temp dir and sidecar certificates it issued."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.filters.authn import decide_connection
from meshkit.proxy.tls import CertificateManager, peer_identity
from meshkit.proxy.tls.sniff import sniff_tls
from meshkit.proxy.tls.x509 import LocalCertificateManager

ALICE = "spiffe://cluster.local/ns/default/sa/alice"
BOB = "spiffe://cluster.local/ns/default/sa/bob"
MALLORY = "spiffe://cluster.local/ns/evil/sa/mallory"

Issue = Callable[..., LocalCertificateManager]


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "ca")


@pytest.fixture
def other_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "other-ca")


def issue_with(
    authority: CertificateAuthority,
    identity: str,
    ttl: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    *,
    check_validity: bool = True,
) -> LocalCertificateManager:
    """A sidecar's CertificateManager holding a certificate the given CA signed for ``identity``."""
    manager = LocalCertificateManager(identity)
    cert = authority.sign_csr(manager.new_csr(), identity, ttl, now=now)
    # An already-expired certificate is refused by rotate(); tests that need one install it
    # with a 'now' inside its validity window.
    moment = None if check_validity or now is None else now.timestamp()
    manager.rotate(cert, authority.root_pem, now=moment)
    return manager


@pytest.fixture
def issue(ca: CertificateAuthority) -> Issue:
    def make(
        identity: str, ttl: timedelta = timedelta(hours=1), now: datetime | None = None
    ) -> LocalCertificateManager:
        return issue_with(ca, identity, ttl, now, check_validity=now is None)

    return make


class MeshListener:
    """A minimal inbound listener built the way the sidecar's should be (the recipe in authn.py).

    Accept a raw socket, sniff plaintext vs TLS, apply the PeerAuthentication decision, do the
    handshake with the manager's CURRENT server context (so rotation affects new connections
    only), then answer each line with ``"<security_policy> <peer identity> <peer serial hex>"``.
    """

    def __init__(self, manager: CertificateManager | None, mode: str = "STRICT") -> None:
        self.manager = manager
        self.mode = mode
        self.accepted: list[tuple[str, str | None]] = []
        self.refused: list[str] = []
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> MeshListener:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        self._sock = sock
        self._tasks.add(asyncio.create_task(self._accept_loop()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            conn.setblocking(False)
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(5):
                is_tls = await sniff_tls(conn)
            if is_tls is None:
                conn.close()
                return
            early = decide_connection(self.mode, is_tls, has_valid_client_cert=True)
            if not early.accept:  # plaintext under STRICT, TLS under DISABLE: refuse before any handshake
                self.refused.append(early.reason)
                conn.close()
                return
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            context = self.manager.server_context if (is_tls and self.manager) else None
            try:
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, ssl=context)
            except (ssl.SSLError, OSError) as exc:
                self.refused.append(f"handshake failed: {exc}")
                conn.close()
                return
            ssl_object = transport.get_extra_info("ssl_object")
            identity = peer_identity(ssl_object)
            decision = decide_connection(self.mode, is_tls, identity is not None)
            if not decision.accept:
                self.refused.append(decision.reason)
                transport.close()
                return
            self.accepted.append((decision.security_policy, identity))
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            serial = f"{x509.load_der_x509_certificate(der).serial_number:x}" if der else "-"
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            for _ in range(100):
                line = await reader.readline()
                if not line:
                    break
                writer.write(f"{decision.security_policy} {identity} {serial}\n".encode())
                await writer.drain()
            writer.close()
        except (TimeoutError, ConnectionError):
            conn.close()


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """One line out, one line back (bounded)."""
    writer.write(b"hello\n")
    await writer.drain()
    async with asyncio.timeout(5):
        return (await reader.readline()).decode().strip()


def peer_serial(writer: asyncio.StreamWriter) -> int:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return int(x509.load_der_x509_certificate(der).serial_number)
