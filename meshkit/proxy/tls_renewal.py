"""Getting the sidecar's workload certificate from the control plane's CA, and keeping it fresh.

``fetch_certificate`` is one ``POST /api/v1/ca/sign {"csr", "token"}`` over raw asyncio streams
(the sidecar has no aiohttp); ``renew`` ties it to a ``CertificateManager``: the key and the
CSR come from a short-lived helper process (``tls_csr_client``; the sidecar itself never loads
``cryptography``) or were prepared ahead, and the answer is checked with ``ssl`` alone
(``CertificateManager.install_verified``); ``keep_rotated``
renews at half the certificate's lifetime, retrying with jittered back-off when the control
plane is unreachable (the old certificate stays in use meanwhile, as with Envoy's SDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from meshkit.proxy.tls import CertificateBundle, CertificateError, CertificateManager
from meshkit.proxy.tls_csr_client import KeyAndCsr, make_key_and_csr

log = logging.getLogger(__name__)

SIGN_PATH = "/api/v1/ca/sign"
MAX_RESPONSE = 1 << 20


class CertificateFetchError(ConnectionError):
    """The CA could not be reached or refused to sign; ``status`` is the HTTP status (0 = no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_RESPONSE:
            raise CertificateFetchError(f"CA answer too large ({length} bytes)")
        return await reader.readexactly(length)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            if len(body) + size > MAX_RESPONSE:
                raise CertificateFetchError("CA answer too large")
            body += await reader.readexactly(size)
            await reader.readline()
        return bytes(body)
    return await reader.read(MAX_RESPONSE)


async def _post_json(url: str, payload: dict[str, str], tls: ssl.SSLContext | None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CertificateFetchError(f"control plane URL {url!r} must be http://host:port or https://host:port")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path.rstrip("/") + SIGN_PATH
    body = json.dumps(payload).encode()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nUser-Agent: meshkit-sidecar\r\n\r\n"
    ).encode()
    use_tls = tls if parts.scheme == "https" else None
    reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=use_tls)
    try:
        writer.write(head + body)
        await writer.drain()
        status_line = await reader.readline()
        fields = status_line.split(b" ", 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/1."):
            raise CertificateFetchError(f"{url}: not an HTTP answer: {status_line[:80]!r}")
        status = int(fields[1])
        headers: dict[str, str] = {}
        for _ in range(100):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, await _read_body(reader, headers)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def fetch_certificate(
    control_url: str, token: str, csr_pem: str, *, tls: ssl.SSLContext | None = None
) -> tuple[str, str]:
    """POST the CSR to ``<control_url>/api/v1/ca/sign``; returns ``(cert_chain_pem, root_pem)``.

    Bound it with ``asyncio.timeout``. Raises ``CertificateFetchError`` with the CA's own error
    text (e.g. the identity mismatch) when it refuses.
    """
    try:
        status, raw = await _post_json(control_url, {"csr": csr_pem, "token": token}, tls)
    except CertificateFetchError:
        raise
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise CertificateFetchError(f"cannot reach the CA at {control_url}: {exc}") from exc
    except ValueError as exc:  # a status line or length that does not parse
        raise CertificateFetchError(f"malformed answer from the CA at {control_url}: {exc}") from exc
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {}
    if status != 200:
        reason = doc.get("error") if isinstance(doc, dict) else None
        raise CertificateFetchError(f"CA refused to sign (HTTP {status}): {reason or raw[:200]!r}", status)
    chain, root = (doc.get("cert_chain"), doc.get("root")) if isinstance(doc, dict) else (None, None)
    if not isinstance(chain, str) or not isinstance(root, str):
        raise CertificateFetchError("CA answer lacks 'cert_chain' or 'root'", status)
    return chain, root


async def renew(
    manager: CertificateManager, control_url: str, token: str, *,
    helper: Sequence[str] | None = None, prepared: KeyAndCsr | None = None,
) -> CertificateBundle:
    """New key + CSR, signed by the CA, checked and installed in ``manager``.

    The key and CSR are ``prepared`` (made ahead, see ``tls_sidecar``) or made now by the helper
    process (``helper`` replaces its command line). A failing helper raises ``CsrHelperError``,
    a ``CertificateError``.
    """
    key, csr = prepared if prepared is not None else await make_key_and_csr(manager.identity, helper)
    chain, root = await fetch_certificate(control_url, token, csr)
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
