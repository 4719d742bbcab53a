"""Getting the sidecar's workload certificate from the control plane's CA, and keeping it fresh.

``renew`` is one renewal for a ``CertificateManager``: the key and the CSR come from a
short-lived helper process (``csr_client``; the sidecar itself never loads ``cryptography``) or
were prepared ahead, the CA signs them (``ca_client.CaClient.sign``) and the answer is checked
with ``ssl`` alone (``CertificateManager.install_verified``). ``keep_rotated`` renews at half the
certificate's lifetime, retrying with jittered back-off when the control plane is unreachable
(the old certificate stays in use meanwhile, as with Envoy's SDS).

It must not do: HTTP itself (``ca_client``), X.509 work (``csr_helper``) or hold state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from meshkit.proxy.tls.ca_client import CaClient, CertificateFetchError
from meshkit.proxy.tls.certinfo import CertificateError
from meshkit.proxy.tls.csr_client import KeyAndCsr, make_key_and_csr
from meshkit.proxy.tls.manager import CertificateBundle, CertificateManager

log = logging.getLogger(__name__)


async def renew(
    manager: CertificateManager, ca: CaClient, *,
    helper: Sequence[str] | None = None, prepared: KeyAndCsr | None = None,
) -> CertificateBundle:
    """New key + CSR, signed by the CA, checked and installed in ``manager``.

    The key and CSR are ``prepared`` (made ahead, see ``sidecar``) or made now by the helper
    process (``helper`` replaces its command line). A failing helper raises ``CsrHelperError``,
    a ``CertificateError``.
    """
    key, csr = prepared if prepared is not None else await make_key_and_csr(manager.identity, helper)
    chain, root = await ca.sign(csr)
    manager.expect_key(key)
    return manager.install_verified(chain, root)


async def keep_rotated(
    manager: CertificateManager,
    renew_once: Callable[[], Awaitable[object]],
    *,
    stop: asyncio.Event,
    retry_min: float = 0.1,
    retry_max: float = 5.0,
    clock: Callable[[], float] = time.time,
) -> None:
    """Renew whenever ``manager.needs_rotation``; sleep until the next rotation point or ``stop``.

    Failures (any exception, not only the expected ones) are logged and retried with jittered
    exponential back-off (``retry_min`` doubling to ``retry_max``); the current certificate keeps
    serving until it is replaced.
    """
    backoff = retry_min
    while not stop.is_set():
        if manager.needs_rotation(clock()):
            try:
                await renew_once()
                backoff = retry_min
            except Exception as exc:  # anything: a loop that ended would let the certificate expire
                delay = backoff * random.uniform(0.5, 1.0)
                log_renewal_failure(f"certificate renewal for {manager.identity}", exc, delay)
                backoff = min(backoff * 2, retry_max)
                await _sleep_or_stop(stop, delay)
                continue
        await _sleep_or_stop(stop, max(0.01, manager.seconds_until_rotation(clock())))


def log_renewal_failure(what: str, exc: BaseException, delay: float) -> None:
    """A warning for the failures renewal expects (CA, helper, checks, timeouts); a traceback for bugs."""
    if isinstance(exc, CertificateFetchError | CertificateError | TimeoutError):
        log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
    else:
        log.exception("%s failed unexpectedly; retrying in %.2fs", what, delay)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
