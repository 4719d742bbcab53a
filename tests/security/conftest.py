"""Shared pieces for the security tests: a real CA in a temp dir and sidecar certificates it issued."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.http import Request, Response
from meshkit.proxy.listener import Listener
from meshkit.proxy.tls import CertificateManager
from meshkit.proxy.tls.inbound import MtlsAcceptor, TlsStats
from meshkit.proxy.tls.x509 import LocalCertificateManager
from meshkit.proxy.xds import ConfigState

ALICE = "spiffe://cluster.local/ns/default/sa/alice"
BOB = "spiffe://cluster.local/ns/default/sa/bob"
MALLORY = "spiffe://cluster.local/ns/evil/sa/mallory"
SERVICE_PORT = 9080

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


class InboundSidecar:
    """The sidecar's REAL inbound listener (``Listener`` + ``MtlsAcceptor``) in front of a probe app.

    The PeerAuthentication mode comes from a real ``Snapshot`` (``inbound.mtls``, port-level
    settings included) applied to a real ``ConfigState``, exactly as a pushed one would be;
    ``apply(mode)`` pushes another. The terminal handler stands in for the app: it answers
    ``"<security_policy> <peer identity> <peer certificate serial hex>"`` from what the real
    listener established for the connection. ``refused`` collects the acceptor's own refusal
    reasons (its log records); ``stats`` are its counters.
    """

    def __init__(
        self,
        manager: CertificateManager | None,
        mode: str = "STRICT",
        port_level: dict[str, str] | None = None,
        service_port: int = SERVICE_PORT,
    ) -> None:
        self.manager = manager
        self.state = ConfigState()
        self.service_port = service_port
        self.apply(mode, port_level)
        self.listener = Listener("inbound", self._answer, self.state)
        self.acceptor = MtlsAcceptor(manager)  # type: ignore[arg-type]
        self.listener.acceptor = self.acceptor
        self.state.listeners.append(self.acceptor.on_snapshot)
        self.accepted: list[tuple[str, str | None]] = []
        self.refused: list[str] = []
        self._records = _Collector(self.refused)
        self._logger = logging.getLogger("meshkit.proxy.tls.inbound")
        self._level = self._logger.level

    def apply(self, mode: str, port_level: dict[str, str] | None = None) -> None:
        """Push a snapshot with this PeerAuthentication (as the control plane would)."""
        doc = {
            "schema": 1,
            "version": f"mtls-{mode}-{sorted((port_level or {}).items())}",
            "node": {"identity": self.manager.identity if self.manager else None, "kind": "sidecar"},
            "inbound": {"app": None, "service_port": self.service_port,
                        "mtls": {"mode": mode, "port_level": port_level or {}}},
        }
        assert self.state.apply(doc) is None

    @property
    def stats(self) -> TlsStats:
        return self.acceptor.stats

    async def __aenter__(self) -> InboundSidecar:
        self._logger.addHandler(self._records)
        self._logger.setLevel(logging.INFO)
        await self.listener.start("127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.listener.close(0.2)
        self._logger.removeHandler(self._records)
        self._logger.setLevel(self._level)

    @property
    def port(self) -> int:
        return self.listener.port

    async def _answer(self, request: Request) -> Response:
        task = asyncio.current_task()
        (conn,) = [c for c in self.listener.connections if c.active is task]
        assert conn.transport is not None
        ssl_object = conn.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        serial = f"{x509.load_der_x509_certificate(der).serial_number:x}" if der else "-"
        policy = "mutual_tls" if request.peer_identity else "none"
        self.accepted.append((policy, request.peer_identity))
        return Response.local(200, f"{policy} {request.peer_identity} {serial}\n")


class _Collector(logging.Handler):
    """The acceptor's refusal reasons, as it logs them."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for prefix, keep in (
            ("inbound connection refused: ", ""),
            ("inbound TLS handshake failed: ", "handshake failed: "),
        ):
            if message.startswith(prefix):
                self.into.append(keep + message[len(prefix):])


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """One HTTP request on the connection, the answer's body back ("" when refused or closed)."""
    writer.write(b"GET /whoami HTTP/1.1\r\nHost: bob:9080\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return ""  # closed without an answer
        lines = head.lower().split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
        return (await reader.readexactly(length)).decode().strip()


def peer_serial(writer: asyncio.StreamWriter) -> int:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return int(x509.load_der_x509_certificate(der).serial_number)
