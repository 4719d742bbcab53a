"""The sidecar's one HTTP client of the control plane: the CA's ``POST /api/v1/ca/sign``.

``CaClient(control_url, token, token_file)`` holds where the CA is and how to authenticate;
``await client.sign(csr_pem)`` sends ``{"csr", "token"}`` over raw asyncio streams (the sidecar
has no aiohttp) and returns ``(cert_chain_pem, root_pem)``. A projected service-account token
(Kubernetes) is rotated by the kubelet: with a ``token_file`` the file is read again before every
CSR, keeping the last good token if it cannot be read. Every failure is a
``CertificateFetchError`` carrying the CA's own error text and HTTP status (0: no answer).

Everything the sidecar says to the control plane about certificates goes through here
(``renewal.renew`` is the only caller in the sidecar); snapshots come over xDS (``proxy.xds``).

It must not do: make keys or CSRs (``csr_client``), check the answer (``manager``), or retry
(the renewal loops do, with back-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from pathlib import Path
from urllib.parse import urlsplit

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


class CaClient:
    """See the module docstring."""

    def __init__(
        self, control_url: str, token: str, token_file: str | None = None, *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.control_url = control_url
        self._token = token.strip()
        self._token_file = token_file
        self._tls = tls  # for an https:// control URL

    def current_token(self) -> str:
        """The token to present now: the token file's content when it has one, else the last one."""
        if self._token_file:
            try:
                fresh = Path(self._token_file).read_text(encoding="utf-8").strip()
            except OSError:
                fresh = ""
            if fresh:
                self._token = fresh
        return self._token

    async def sign(self, csr_pem: str) -> tuple[str, str]:
        """POST the CSR to ``<control_url>/api/v1/ca/sign``; returns ``(cert_chain_pem, root_pem)``.

        Bound it with ``asyncio.timeout``. Raises ``CertificateFetchError`` with the CA's own error
        text (e.g. the identity mismatch) when it refuses.
        """
        return await _sign(self.control_url, self.current_token(), csr_pem, self._tls)


async def _sign(control_url: str, token: str, csr_pem: str, tls: ssl.SSLContext | None) -> tuple[str, str]:
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
