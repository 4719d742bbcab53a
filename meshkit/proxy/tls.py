"""Mutual TLS for the sidecar: its key and CSR, its ``ssl.SSLContext``s, peer SPIFFE ids, rotation.

How the pieces are used:

* ``CertificateManager.new_csr()`` makes a fresh EC P-256 key and a CSR whose only URI SAN is
  the workload's SPIFFE id; the CA's answer goes to ``rotate(cert_chain, root)``, which checks
  it (our key, our identity, issued by the root, currently valid), builds a server and a client
  context and swaps them in with one assignment. Listeners and connection pools read
  ``manager.server_context`` / ``manager.client_context`` when they open a connection, so new
  connections get the new certificate while established ones keep theirs.
* Both contexts require and verify the peer's certificate against the root bundle. SPIFFE ids
  are URI SANs, not DNS names, so hostname checking is off and the caller checks the peer's
  identity itself after the handshake with ``peer_identity`` / ``check_peer_identity``
  (called once per connection; parsing is cached by certificate bytes).
* PERMISSIVE inbound ports carry both plaintext and mTLS: ``looks_like_tls`` tells them apart
  from the first bytes, ``sniff_tls`` peeks at them on an accepted socket without consuming.

The standard library's ``ssl`` does the handshakes; ``cryptography`` is only used off the
request path (key/CSR generation, certificate parsing).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

TLS_HANDSHAKE = 0x16


class CertificateError(ValueError):
    """A certificate handed to the sidecar is unusable (wrong key, identity, issuer or validity)."""


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


# --------------------------------------------------------------------------- keys and identities


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def build_csr(key: ec.EllipticCurvePrivateKey, identity: str) -> str:
    """A PEM CSR with an empty subject and ``identity`` as its only (URI) SAN."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


@functools.lru_cache(maxsize=512)
def identity_from_der(der: bytes) -> str | None:
    """The SPIFFE id in a DER certificate's URI SAN; None if it has none or several.

    Pure and cached by the certificate bytes: a peer reconnecting with the same certificate
    costs a dict lookup, not an X.509 parse.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    spiffe = [uri for uri in _uri_sans(cert) if uri.startswith("spiffe://")]
    return spiffe[0] if len(spiffe) == 1 else None


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified peer's SPIFFE id after a handshake (``transport.get_extra_info('ssl_object')``)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return identity_from_der(der) if der else None


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
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def build_contexts(
    cert_chain_pem: str, key: ec.EllipticCurvePrivateKey, root_pem: str
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for mutual TLS. ``ssl`` loads keys only from files, so the key
    is written to a private 0700 temporary directory (file 0600) and removed right after."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with tempfile.TemporaryDirectory(prefix="meshkit-tls-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
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


def _load_chain(pem: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise CertificateError(f"cert_chain is not PEM ({exc})") from exc
    if not chain:
        raise CertificateError("cert_chain is empty")
    return chain


def _issued_by_bundle(chain: list[x509.Certificate], roots: list[x509.Certificate]) -> bool:
    def issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):  # wrong issuer name, key type or signature
            return False
        return True

    if not all(issued(child, parent) for child, parent in itertools.pairwise(chain)):
        return False
    return any(issued(chain[-1], root) for root in roots)


class CertificateManager:
    """Holds the sidecar's current certificate and contexts and swaps them atomically on rotation.

    No lock is needed: ``rotate`` builds everything first and publishes it with one attribute
    assignment, and each connection reads the context once when it starts.
    """

    def __init__(self, identity: str) -> None:
        if not identity.startswith("spiffe://"):
            raise CertificateError(f"identity {identity!r} is not a SPIFFE id")
        self.identity = identity
        self._pending_key: ec.EllipticCurvePrivateKey | None = None
        self._current: CertificateBundle | None = None

    def new_csr(self) -> str:
        """A fresh key (kept until ``rotate``) and its CSR for this identity."""
        self._pending_key = generate_key()
        return build_csr(self._pending_key, self.identity)

    def rotate(self, cert_chain_pem: str, root_pem: str, *, now: float | None = None) -> CertificateBundle:
        """Check the CA's answer to the last ``new_csr`` and make it current; returns the new bundle."""
        key = self._pending_key
        if key is None:
            raise CertificateError("rotate() without a pending key: call new_csr() first")
        chain = _load_chain(cert_chain_pem)
        roots = _load_chain(root_pem)
        leaf = chain[0]
        pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(*pub) != key.public_key().public_bytes(*pub):
            raise CertificateError("issued certificate is not for the key of our CSR")
        uris = _uri_sans(leaf)
        if uris != [self.identity]:
            raise CertificateError(f"issued certificate names {uris}, expected [{self.identity}]")
        if not _issued_by_bundle(chain, roots):
            raise CertificateError("issued certificate does not chain to the root bundle")
        moment = time.time() if now is None else now
        not_before = leaf.not_valid_before_utc.timestamp()
        not_after = leaf.not_valid_after_utc.timestamp()
        if not_after <= moment:
            expired = leaf.not_valid_after_utc.isoformat()
            raise CertificateError(f"issued certificate already expired at {expired}")
        server, client = build_contexts(cert_chain_pem, key, root_pem)
        bundle = CertificateBundle(
            identity=self.identity, cert_chain_pem=cert_chain_pem, root_pem=root_pem,
            serial=leaf.serial_number, not_before=not_before, not_after=not_after, installed_at=moment,
            server_context=server, client_context=client,
        )
        self._current = bundle  # the atomic swap
        self._pending_key = None
        return bundle

    def install(
        self, key: ec.EllipticCurvePrivateKey, cert_chain_pem: str, root_pem: str, *, now: float | None = None
    ) -> CertificateBundle:
        """Like ``rotate`` for a key made elsewhere (certificate files mounted by an operator)."""
        self._pending_key = key
        return self.rotate(cert_chain_pem, root_pem, now=now)

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
