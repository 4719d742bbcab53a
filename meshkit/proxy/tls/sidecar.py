"""The sidecar's own workload certificate: bootstrap at start, rotation until shutdown.

``SidecarCertificates(control_url, token)`` is created by ``main`` when the sidecar was given
a CA token (``MESHKIT_CA_TOKEN`` or ``--ca-token-file``); without one the sidecar runs
plaintext, exactly as before (static ``--config`` mode, benchmarks).

Identity: taken from the first snapshot's ``node.identity``. The control plane's registry is
the source of truth for who a proxy is (its service account), and the CA independently
refuses a CSR for any identity other than the one the token was issued for, so a wrong
snapshot can only make signing fail, never yield someone else's certificate.

``run(state, stop)``: wait for that snapshot, then key + CSR (made by the short-lived helper
process, ``csr_client``: this process never loads ``cryptography``) -> ``POST
/api/v1/ca/sign`` (``ca_client``) -> answer checked with ``ssl`` (retried with back-off until it works; a
failing helper is retried the same way while the current certificate keeps serving), then
``keep_rotated`` (at half the TTL) until
``stop``. ``rotate_now()`` renews at once on request (the admin ``POST /certs/rotate``): every
renewal, scheduled or asked for, runs as ONE shared task, so concurrent requests join the
renewal in flight instead of starting a second one, and a failure leaves the current
certificate serving (``RotationRefused`` says why). ``ready`` turns True after the first
certificate is installed; the admin ``/ready`` page waits for it. ``server_context`` /
``client_context`` raise ``CertificateError`` until then, which the listener and the pool turn into a refused
connection / a 503 UF. ``describe()`` is the admin ``/certs`` page.

The next key and CSR are made ``PREPARE_AHEAD`` seconds before each rotation is due (at once
for short-lived certificates), so a rotation waits only for the CA, never for the helper
process (which takes a few hundred ms of CPU to start on a busy machine).

It must not do: TLS handshakes (``inbound``, ``proxy.upstream``) or HTTP (``ca_client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from meshkit.proxy.tls.ca_client import CaClient
from meshkit.proxy.tls.certinfo import CertificateError
from meshkit.proxy.tls.csr_client import KeyAndCsr, make_key_and_csr
from meshkit.proxy.tls.manager import CertificateBundle, CertificateManager
from meshkit.proxy.tls.renewal import keep_rotated, log_renewal_failure, renew

log = logging.getLogger(__name__)


class RotationRefused(Exception):
    """An on-demand rotation that cannot happen or failed; ``status`` is the admin page's HTTP status.

    409: this sidecar has nothing to rotate (no certificate yet). 503: the CA could not be
    reached or refused, or the new key / certificate did not check out. Either way the current
    certificate, if any, keeps serving.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

RETRY_MIN = 0.1
RETRY_MAX = 5.0
SIGN_TIMEOUT = 10.0
PREPARE_AHEAD = 30.0  # seconds before a rotation is due to make its key and CSR


class SidecarCertificates:
    """See the module docstring."""

    def __init__(
        self, control_url: str, token: str, token_file: str | None = None, *,
        csr_helper: Sequence[str] | None = None, tls: ssl.SSLContext | None = None,
    ) -> None:
        if not token.strip():
            raise ValueError("the CA token is empty")
        self.control_url = control_url
        # A projected service-account token (Kubernetes) is rotated by the kubelet: the client
        # reads the file again before every CSR, keeping the last good token if it cannot be read.
        self.ca = CaClient(control_url, token, token_file, tls=tls)  # tls: for an https:// control plane
        self._csr_helper = csr_helper  # None: python -m meshkit.proxy.tls.csr_helper
        self._prepared: asyncio.Task[KeyAndCsr] | None = None  # the next key + CSR, made ahead
        self._preparing = False  # True once that task stopped waiting and runs the helper
        self.manager: CertificateManager | None = None
        self.ready_event = asyncio.Event()
        self.rotations = 0
        self.rotations_requested = 0  # on-demand renewals that installed a certificate
        self.last_error: str | None = None
        self._renewal: asyncio.Task[CertificateBundle] | None = None  # the one renewal in flight
        self.on_install: list[Callable[[CertificateBundle], None]] = []  # each certificate installed

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
        manager.on_publish.extend(self.on_install)
        try:
            await self._first_certificate(manager, stop)
            if stop.is_set():
                return
            await keep_rotated(manager, self._renew_once, stop=stop, retry_min=RETRY_MIN, retry_max=RETRY_MAX)
        finally:
            renewal, self._renewal = self._renewal, None
            if renewal is not None:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await renewal
            prepared, self._prepared = self._prepared, None
            if prepared is not None:  # cancelling it kills a helper still running
                prepared.cancel()
                with contextlib.suppress(asyncio.CancelledError, CertificateError):
                    await prepared

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
            except Exception as exc:  # anything: the sidecar must keep trying, never stop
                delay = backoff * random.uniform(0.5, 1.0)
                log_renewal_failure(f"first certificate for {manager.identity}", exc, delay)
                backoff = min(backoff * 2, RETRY_MAX)
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass

    async def _renew_once(self) -> CertificateBundle:
        """Renew now, or join the renewal already running (never two at once); its new bundle."""
        task = self._renewal
        if task is None or task.done():
            task = self._renewal = asyncio.ensure_future(self._renew())
        # shield: a caller that goes away (admin client disconnects) does not cancel the renewal
        # for the others; the loops still end it through ``run``'s cancellation of this task.
        return await asyncio.shield(task)

    async def rotate_now(self) -> dict[str, Any]:
        """Renew at once (admin ``POST /certs/rotate``): old and new serial and expiry, how long it took.

        Raises ``RotationRefused`` (409 before the first certificate, 503 when the CA is
        unreachable or refuses, or the answer does not check out); the old certificate keeps
        serving then.
        """
        manager = self.manager
        old = manager.current if manager is not None else None
        if manager is None or old is None:
            why = self.last_error or "the sidecar is still waiting for its identity or first certificate"
            raise RotationRefused(409, f"no workload certificate to rotate yet ({why})")
        joined = self._renewal is not None and not self._renewal.done()
        began = time.monotonic()
        try:
            new = await self._renew_once()
        except Exception as exc:  # CA, helper, checks, timeout: the old certificate stays
            reason = f"{exc}" or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no certificate within {SIGN_TIMEOUT:g} s (is the CA at {self.control_url} up?)"
            raise RotationRefused(503, f"rotation of {manager.identity} failed: {reason}; the current "
                                       f"certificate (serial {old.serial:x}) keeps serving") from None
        if not joined:
            self.rotations_requested += 1
        return {
            "rotated": new.serial != old.serial,
            "identity": manager.identity,
            "joined_renewal_in_flight": joined,
            "seconds": round(time.monotonic() - began, 3),
            "old": _summary(old),
            "new": _summary(new),
            "certificates_issued": self.rotations,
        }

    async def _renew(self) -> CertificateBundle:
        manager = self.manager
        assert manager is not None
        try:
            async with asyncio.timeout(SIGN_TIMEOUT):
                prepared = await self._take_prepared()
                bundle = await renew(manager, self.ca, helper=self._csr_helper, prepared=prepared)
        except Exception as exc:
            self.last_error = f"{time.strftime('%H:%M:%S')}: {exc or type(exc).__name__}"
            raise
        self.rotations += 1
        self.last_error = None
        log.info("workload certificate %x installed for %s", bundle.serial, bundle.identity)
        delay = max(0.0, manager.seconds_until_rotation(time.time()) - PREPARE_AHEAD)
        self._prepared = asyncio.ensure_future(self._prepare(manager.identity, delay))
        return bundle

    async def _prepare(self, identity: str, delay: float) -> KeyAndCsr:
        self._preparing = False
        await asyncio.sleep(delay)
        self._preparing = True
        return await make_key_and_csr(identity, self._csr_helper)

    async def _take_prepared(self) -> KeyAndCsr | None:
        """The key + CSR made ahead, if that worked (None: ``renew`` makes them now)."""
        task, self._prepared = self._prepared, None
        if task is None:
            return None
        if not task.done() and not self._preparing:  # due earlier than planned: make them now
            task.cancel()
            return None
        try:
            return await task
        except CertificateError as exc:
            log.warning("the key prepared ahead could not be made (%s); making one now", exc)
            return None

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
            "rotations_requested": self.rotations_requested,
            "last_error": self.last_error,
            "chain": [],
            "root": [],
        }
        if bundle is None or manager is None:
            return doc
        doc["seconds_until_rotation"] = round(manager.seconds_until_rotation(moment), 3)
        doc["rotate_at"] = datetime.fromtimestamp(bundle.rotate_at, UTC).isoformat()
        doc["installed_at"] = datetime.fromtimestamp(bundle.installed_at, UTC).isoformat()
        doc["chain"] = [cert.admin_view(moment) for cert in bundle.chain]
        doc["root"] = [cert.admin_view(moment) for cert in bundle.root]
        return doc


def _summary(bundle: CertificateBundle) -> dict[str, Any]:
    return {
        "serial": f"{bundle.serial:x}",
        "not_before": datetime.fromtimestamp(bundle.not_before, UTC).isoformat(),
        "not_after": datetime.fromtimestamp(bundle.not_after, UTC).isoformat(),
        "rotate_at": datetime.fromtimestamp(bundle.rotate_at, UTC).isoformat(),
    }
