"""The sidecar's own workload certificate: bootstrap at start, rotation until shutdown.

``SidecarCertificates(control_url, token)`` is created by ``main`` when the sidecar was given
a CA token (``MESHKIT_CA_TOKEN`` or ``--ca-token-file``); without one the sidecar runs
plaintext, exactly as before (static ``--config`` mode, benchmarks).

Identity: taken from the first snapshot's ``node.identity``. The control plane's registry is
the source of truth for who a proxy is (its service account), and the CA independently
refuses a CSR for any identity other than the one the token was issued for, so a wrong
snapshot can only make signing fail, never yield someone else's certificate.

``run(state, stop)``: wait for that snapshot, then key + CSR -> ``POST /api/v1/ca/sign``
(retried with back-off until it works), then ``keep_rotated`` (at half the TTL) until
``stop``. ``ready`` turns True after the first certificate is installed; the admin
``/ready`` page waits for it. ``server_context`` / ``client_context`` raise
``CertificateError`` until then, which the listener and the pool turn into a refused
connection / a 503 UF. ``describe()`` is the admin ``/certs`` page.

It must not do: TLS handshakes (listener, upstream) or HTTP beyond the CA call (tls_renewal).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from meshkit.proxy.tls import CertificateError, CertificateManager
from meshkit.proxy.tls_renewal import CertificateFetchError, keep_rotated, renew

log = logging.getLogger("meshkit.proxy.tls_sidecar")

RETRY_MIN = 0.1
RETRY_MAX = 5.0
SIGN_TIMEOUT = 10.0


class SidecarCertificates:
    """See the module docstring."""

    def __init__(self, control_url: str, token: str, token_file: str | None = None) -> None:
        if not token.strip():
            raise ValueError("the CA token is empty")
        self.control_url = control_url
        self._token = token.strip()
        # A projected service-account token (Kubernetes) is rotated by the kubelet: read the file
        # again before every CSR, keeping the last good token if it cannot be read.
        self._token_file = token_file
        self.manager: CertificateManager | None = None
        self.ready_event = asyncio.Event()
        self.rotations = 0
        self.last_error: str | None = None

    def _current_token(self) -> str:
        if self._token_file:
            try:
                fresh = Path(self._token_file).read_text(encoding="utf-8").strip()
            except OSError:
                fresh = ""
            if fresh:
                self._token = fresh
        return self._token

    # -- what listeners, pools and admin read -------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.manager is not None and self.manager.current is not None

    @property
    def server_context(self) -> ssl.SSLContext:
        if self.manager is None:
            raise CertificateError("no workload certificate yet")
        return self.manager.server_context

    @property
    def client_context(self) -> ssl.SSLContext:
        if self.manager is None:
            raise CertificateError("no workload certificate yet")
        return self.manager.client_context

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, state: Any, stop: asyncio.Event) -> None:
        identity = await self._identity(state, stop)
        if identity is None:
            return
        self.manager = manager = CertificateManager(identity)
        await self._first_certificate(manager, stop)
        if stop.is_set():
            return
        await keep_rotated(manager, self._renew_once, stop=stop, retry_min=RETRY_MIN, retry_max=RETRY_MAX)

    async def _identity(self, state: Any, stop: asyncio.Event) -> str | None:
        arrived = asyncio.Event()
        state.listeners.append(lambda _snapshot: arrived.set())
        while not stop.is_set():
            current = state.current
            identity = current.node.get("identity") if current is not None else None
            if identity:
                return str(identity)
            if current is not None:
                log.warning("snapshot %s has no node.identity: cannot ask for a certificate", current.version)
            arrived.clear()
            waiter = asyncio.ensure_future(arrived.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        return None

    async def _first_certificate(self, manager: CertificateManager, stop: asyncio.Event) -> None:
        backoff = RETRY_MIN
        while not stop.is_set():
            try:
                await self._renew_once()
                self.ready_event.set()
                return
            except (CertificateFetchError, CertificateError, TimeoutError) as exc:
                delay = backoff * random.uniform(0.5, 1.0)
                log.warning("no certificate for %s yet (%s); retrying in %.2fs", manager.identity, exc, delay)
                backoff = min(backoff * 2, RETRY_MAX)
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass

    async def _renew_once(self) -> None:
        manager = self.manager
        assert manager is not None
        try:
            async with asyncio.timeout(SIGN_TIMEOUT):
                bundle = await renew(manager, self.control_url, self._current_token())
        except (CertificateFetchError, CertificateError, TimeoutError) as exc:
            self.last_error = f"{time.strftime('%H:%M:%S')}: {exc}"
            raise
        self.rotations += 1
        self.last_error = None
        log.info("workload certificate %x installed for %s", bundle.serial, bundle.identity)

    # -- admin ----------------------------------------------------------------------------------

    def describe(self, now: float | None = None) -> dict[str, Any]:
        """The admin ``/certs`` page: the chain in use, its validity and when it rotates."""
        moment = time.time() if now is None else now
        manager = self.manager
        bundle = manager.current if manager is not None else None
        doc: dict[str, Any] = {
            "identity": manager.identity if manager is not None else None,
            "ready": bundle is not None,
            "certificates_issued": self.rotations,
            "last_error": self.last_error,
            "chain": [],
            "root": [],
        }
        if bundle is None or manager is None:
            return doc
        doc["seconds_until_rotation"] = round(manager.seconds_until_rotation(moment), 3)
        doc["rotate_at"] = datetime.fromtimestamp(bundle.rotate_at, UTC).isoformat()
        for key, pem in (("chain", bundle.cert_chain_pem), ("root", bundle.root_pem)):
            doc[key] = [_describe(cert, moment) for cert in x509.load_pem_x509_certificates(pem.encode())]
        return doc


def _describe(cert: x509.Certificate, now: float) -> dict[str, Any]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "spiffe_id": next((u for u in uris if u.startswith("spiffe://")), None),
        "serial": f"{cert.serial_number:x}",
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "seconds_left": round(not_after.timestamp() - now, 3),
    }
