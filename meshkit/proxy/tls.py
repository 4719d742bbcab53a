"""Mutual TLS for the sidecar: its ``ssl.SSLContext``s, peer SPIFFE ids, the current certificate.

How the pieces are used:

* A certificate request is a fresh EC P-256 key plus a CSR whose only URI SAN is the
  workload's SPIFFE id. The running sidecar has them made by a short-lived helper process
  (``tls_csr_client`` / ``tls_csr_helper``); ``CertificateManager.install_verified`` checks
  the CA's answer with ``ssl`` alone (``tls_verify``: our key, our identity, issued by the
  root, currently valid), builds a server and a client context and swaps them in with one
  assignment. Listeners and
  connection pools read ``manager.server_context`` / ``manager.client_context`` when they
  open a connection, so new connections get the new certificate while established ones keep
  theirs. ``new_csr`` / ``rotate`` do the same in-process, for tests and tools.
* Both contexts require and verify the peer's certificate against the root bundle. SPIFFE ids
  are URI SANs, not DNS names, so hostname checking is off and the caller checks the peer's
  identity itself after the handshake with ``peer_identity`` / ``check_peer_identity``
  (once per connection, from the standard library's decode of the verified certificate,
  ``SSLObject.getpeercert()``).
* PERMISSIVE inbound ports carry both plaintext and mTLS: ``looks_like_tls`` tells them apart
  from the first bytes, ``sniff_tls`` peeks at them on an accepted socket without consuming.

The standard library's ``ssl`` does everything here. ``cryptography`` (~10 MiB of RSS) is
never imported by this module: the X.509 work is in ``tls_x509``, which only the helper
process, tests and tools load (``generate_key``, ``build_csr`` and ``identity_from_der`` are
still importable from here: they load ``tls_x509`` on first use).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshkit.proxy.tls_certinfo import CertificateError, CertificateInfo, IssuedCertificate

TLS_HANDSHAKE = 0x16


class PeerIdentityError(ConnectionError):
    """The peer completed the TLS handshake but is not one of the identities we expected."""


# --------------------------------------------------------------------------- sniffing


def looks_like_tls(first_bytes: bytes) -> bool:
    """True when the bytes open a TLS handshake record: 0x16 0x03 0x00..0x04 (SSL 3.0 .. TLS 1.3).

    Needs at least three bytes; an HTTP/1.x request can never start with 0x16.
    """
    return (
        len(first_bytes) >= 3
        and first_bytes[0] == TLS_HANDSHAKE
        and first_bytes[1] == 0x03
        and first_bytes[2] <= 0x04
    )


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def sniff_tls(sock: socket.socket) -> bool | None:
    """Peek (``MSG_PEEK``, nothing consumed) at a freshly accepted non-blocking socket.

    Returns True for TLS, False for anything else, None when the peer closed first. Bound it
    with ``asyncio.timeout`` (a client that sends nothing would otherwise hold it). Afterwards
    hand the socket to ``loop.connect_accepted_socket(..., ssl=server_context if tls else None)``.
    """
    fd = sock.fileno()
    for _ in range(10_000):  # each turn waits for readability or 5 ms; the caller's timeout bounds it
        try:
            head: bytes | None = sock.recv(3, socket.MSG_PEEK)
        except BlockingIOError:
            head = None
        except OSError:
            return None
        if head == b"":
            return None
        if head is not None and (len(head) >= 3 or head[0] != TLS_HANDSHAKE):
            return looks_like_tls(head)
        if head is None:  # nothing yet: wait until readable
            await _readable(fd)
        else:  # 1-2 bytes of a possible TLS record: the rest is in flight
            await asyncio.sleep(0.005)
    return None


# --------------------------------------------------------------------------- identities

_X509_NAMES = frozenset({"generate_key", "build_csr", "identity_from_der"})


def __getattr__(name: str) -> Any:
    """``generate_key``, ``build_csr``, ``identity_from_der``: load ``tls_x509`` (cryptography) lazily."""
    if name in _X509_NAMES:
        return getattr(importlib.import_module("meshkit.proxy.tls_x509"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def identity_from_decoded(cert: dict[str, Any]) -> str | None:
    """The SPIFFE id in a certificate decoded by ``ssl`` (``getpeercert()``); None for none or several."""
    spiffe = [
        value for kind, value in cert.get("subjectAltName", ())
        if kind == "URI" and value.startswith("spiffe://")
    ]
    return spiffe[0] if len(spiffe) == 1 else None


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified peer's SPIFFE id after a handshake (``transport.get_extra_info('ssl_object')``).

    ``getpeercert()`` decodes the certificate only when the handshake verified it (our contexts
    always require that), so an unverified certificate has no identity.
    """
    if ssl_object is None:
        return None
    decoded = ssl_object.getpeercert()
    return identity_from_decoded(decoded) if decoded else None


def check_peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, allowed: Collection[str]) -> str:
    """Return the peer's SPIFFE id, or raise ``PeerIdentityError`` naming what was expected.

    The outbound side calls this with the cluster's ``tls.server_identities``.
    """
    identity = peer_identity(ssl_object)
    if identity is None or identity not in allowed:
        raise PeerIdentityError(
            f"peer presented identity {identity or '(none)'}, expected one of {sorted(allowed)}"
        )
    return identity


# --------------------------------------------------------------------------- contexts


def _context(server_side: bool, root_pem: str, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not server_side:
        ctx.check_hostname = False  # SPIFFE ids are URI SANs: verified by check_peer_identity
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the bundle is the anchor, even an intermediate
    ctx.load_verify_locations(cadata=root_pem)
    ctx.load_cert_chain(str(cert_file), str(key_file))  # also checks that the key matches the leaf
    return ctx


def build_contexts(cert_chain_pem: str, key_pem: str, root_pem: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for mutual TLS. ``ssl`` loads keys only from files, so the key
    is written to a private 0700 temporary directory (file 0600) and removed right after."""
    with tempfile.TemporaryDirectory(prefix="meshkit-tls-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key_pem)
        cert_file.write_text(cert_chain_pem)
        try:
            server = _context(True, root_pem, cert_file, key_file)
            client = _context(False, root_pem, cert_file, key_file)
        except ssl.SSLError as exc:
            raise CertificateError(f"cannot build TLS contexts: {exc}") from exc
    return server, client


# --------------------------------------------------------------------------- the current certificate


@dataclass(frozen=True, slots=True)
class CertificateBundle:
    """One issued certificate and the contexts built from it (immutable: swapped whole)."""

    identity: str
    cert_chain_pem: str
    root_pem: str
    serial: int
    not_before: float  # epoch seconds
    not_after: float
    installed_at: float
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext
    chain: tuple[CertificateInfo, ...] = ()  # leaf first, as the admin /certs page lists them
    root: tuple[CertificateInfo, ...] = ()

    @property
    def rotate_at(self) -> float:
        """Half-way through the validity left when it was installed (half the TTL for a fresh cert).

        Counting from installation rather than not-before keeps the CA's clock-skew backdating
        from eating into very short TTLs.
        """
        start = max(self.installed_at, self.not_before)
        return start + (self.not_after - start) / 2

    def admin_view(self) -> dict[str, object]:
        return {
            "identity": self.identity,
            "serial": f"{self.serial:x}",
            "not_before": datetime.fromtimestamp(self.not_before, UTC).isoformat(),
            "not_after": datetime.fromtimestamp(self.not_after, UTC).isoformat(),
            "rotate_at": datetime.fromtimestamp(self.rotate_at, UTC).isoformat(),
        }


class CertificateManager:
    """Holds the sidecar's current certificate and contexts and swaps them atomically on rotation.

    No lock is needed: installing builds everything first and publishes it with one attribute
    assignment, and each connection reads the context once when it starts.

    Two ways in: the sidecar's (``expect_key`` with the helper's key, then ``install_verified``,
    checked with ``ssl`` alone: no ``cryptography`` in this process) and the in-process one
    (``new_csr`` then ``rotate``; loads ``tls_x509``, and takes a ``now`` for tests).
    """

    def __init__(self, identity: str) -> None:
        if not identity.startswith("spiffe://"):
            raise CertificateError(f"identity {identity!r} is not a SPIFFE id")
        self.identity = identity
        self._pending_key: str | None = None  # PEM
        self._current: CertificateBundle | None = None

    def expect_key(self, key_pem: str) -> None:
        """The private key (PEM) of the CSR just sent; kept until the certificate is installed."""
        self._pending_key = key_pem

    def new_csr(self) -> str:
        """A fresh key (kept until ``rotate``) and its CSR for this identity, made in this process."""
        from meshkit.proxy import tls_x509  # noqa: PLC0415 - cryptography only where it is used

        private = tls_x509.generate_key()
        self._pending_key = tls_x509.key_pem(private)
        return tls_x509.build_csr(private, self.identity)

    def _require_pending(self) -> str:
        if self._pending_key is None:
            raise CertificateError("rotate() without a pending key: call new_csr() first")
        return self._pending_key

    def rotate(self, cert_chain_pem: str, root_pem: str, *, now: float | None = None) -> CertificateBundle:
        """Check the CA's answer to the last ``new_csr`` in-process and make it current."""
        from meshkit.proxy.tls_x509 import check_issued  # noqa: PLC0415 - cryptography only where used

        key = self._require_pending()
        moment = time.time() if now is None else now
        issued = check_issued(key, cert_chain_pem, root_pem, self.identity, moment)
        contexts = build_contexts(cert_chain_pem, key, root_pem)
        return self._publish(cert_chain_pem, root_pem, issued, moment, contexts)

    def install_verified(
        self, cert_chain_pem: str, root_pem: str, *, now: float | None = None
    ) -> CertificateBundle:
        """Check the CA's answer for the pending key with ``ssl`` alone (``tls_verify``); make it current."""
        from meshkit.proxy.tls_verify import verify_issued  # noqa: PLC0415 - tls_verify imports this module

        key = self._require_pending()
        moment = time.time() if now is None else now
        issued, server, client = verify_issued(key, cert_chain_pem, root_pem, self.identity, moment)
        return self._publish(cert_chain_pem, root_pem, issued, moment, (server, client))

    def install(
        self, key_pem: str, cert_chain_pem: str, root_pem: str, *, now: float | None = None
    ) -> CertificateBundle:
        """Like ``rotate`` for a key made elsewhere (PEM), checked in this process."""
        self._pending_key = key_pem
        return self.rotate(cert_chain_pem, root_pem, now=now)

    def _publish(
        self, cert_chain_pem: str, root_pem: str, issued: IssuedCertificate, moment: float,
        contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    ) -> CertificateBundle:
        server, client = contexts
        bundle = CertificateBundle(
            identity=self.identity, cert_chain_pem=cert_chain_pem, root_pem=root_pem,
            serial=issued.serial, not_before=issued.not_before, not_after=issued.not_after,
            installed_at=moment, server_context=server, client_context=client,
            chain=issued.chain, root=issued.root,
        )
        self._current = bundle  # the atomic swap
        self._pending_key = None
        return bundle

    @property
    def current(self) -> CertificateBundle | None:
        return self._current

    def _require(self) -> CertificateBundle:
        if self._current is None:
            raise CertificateError(f"no certificate for {self.identity} yet")
        return self._current

    @property
    def server_context(self) -> ssl.SSLContext:
        return self._require().server_context

    @property
    def client_context(self) -> ssl.SSLContext:
        return self._require().client_context

    def needs_rotation(self, now: float) -> bool:
        """True once half of the current certificate's lifetime has passed (or there is none)."""
        return self._current is None or now >= self._current.rotate_at

    def seconds_until_rotation(self, now: float) -> float:
        return 0.0 if self._current is None else max(0.0, self._current.rotate_at - now)
