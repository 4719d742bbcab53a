"""The sidecar's current workload certificate and the ``ssl`` contexts built from it.

``CertificateManager`` holds one ``CertificateBundle`` (certificate, validity, server and client
context) and swaps it whole on rotation. The running sidecar gets its key and CSR from the
short-lived helper process (``csr_client`` / ``csr_helper``), remembers the key with
``expect_key`` and then ``install_verified`` checks the CA's answer with ``ssl`` alone
(``verify``: our key, our identity, issued by the root, currently valid), builds a server and a
client context (``contexts``) and publishes them with one assignment. Listeners and connection
pools read ``manager.server_context`` / ``manager.client_context`` when they open a connection,
so new connections get the new certificate while established ones keep theirs.

The in-process path (key and CSR made here, answer checked with ``cryptography``) is
``x509.LocalCertificateManager``, for tests and tools.

It must not do: import ``cryptography`` (~10 MiB of RSS in every sidecar), talk to the CA, or
schedule rotations (``renewal``, ``sidecar``).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from meshkit.proxy.tls.certinfo import CertificateError, CertificateInfo, IssuedCertificate
from meshkit.proxy.tls.verify import verify_issued


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
    key_pem: str = field(default="", repr=False)  # handed to ``--concurrency`` workers (``workers``)

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

    The sidecar's way in: ``expect_key`` with the helper's key, then ``install_verified``
    (checked with ``ssl`` alone: no ``cryptography`` in this process).
    """

    def __init__(self, identity: str) -> None:
        if not identity.startswith("spiffe://"):
            raise CertificateError(f"identity {identity!r} is not a SPIFFE id")
        self.identity = identity
        self._pending_key: str | None = None  # PEM
        self._current: CertificateBundle | None = None
        # called with each bundle installed: the ``--concurrency`` workers get it (``workers``)
        self.on_publish: list[Callable[[CertificateBundle], None]] = []

    def expect_key(self, key_pem: str) -> None:
        """The private key (PEM) of the CSR just sent; kept until the certificate is installed."""
        self._pending_key = key_pem

    def _require_pending(self) -> str:
        if self._pending_key is None:
            raise CertificateError("rotate() without a pending key: call new_csr() first")
        return self._pending_key

    def install_verified(
        self, cert_chain_pem: str, root_pem: str, *, now: float | None = None
    ) -> CertificateBundle:
        """Check the CA's answer for the pending key with ``ssl`` alone (``verify``); make it current."""
        key = self._require_pending()
        moment = time.time() if now is None else now
        issued, server, client = verify_issued(key, cert_chain_pem, root_pem, self.identity, moment)
        return self._publish(cert_chain_pem, root_pem, issued, moment, (server, client))

    def _publish(
        self, cert_chain_pem: str, root_pem: str, issued: IssuedCertificate, moment: float,
        contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    ) -> CertificateBundle:
        server, client = contexts
        bundle = CertificateBundle(
            identity=self.identity, cert_chain_pem=cert_chain_pem, root_pem=root_pem,
            serial=issued.serial, not_before=issued.not_before, not_after=issued.not_after,
            installed_at=moment, server_context=server, client_context=client,
            chain=issued.chain, root=issued.root, key_pem=self._pending_key or "",
        )
        self._current = bundle  # the atomic swap
        self._pending_key = None
        for callback in self.on_publish:
            callback(bundle)
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
