"""How a demo app calls other services: plain HTTP, through ``HTTP_PROXY`` when it is set.

In the mesh ``HTTP_PROXY`` names the app's sidecar (its outbound port), and URLs name
services (``http://reviews:9080/reviews/0``): the sidecar routes on the Host. Loopback
hosts and ``NO_PROXY`` entries bypass the proxy, as curl does for ``NO_PROXY``. Only
``http://`` URLs use the proxy; ``https://`` ones are always sent directly.

A call never raises for a network failure: it returns an ``Answer`` whose ``status`` is
None and whose ``error`` says what happened (timeout, refused, reset), which is what the
apps render as "currently unavailable" and the clients report.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
DEFAULT_MAX_BODY = 1 << 20


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bypassed(host: str, no_proxy: tuple[str, ...]) -> bool:
    host = host.lower()
    for entry in no_proxy:
        if entry == "*":
            return True
        suffix = entry.lstrip(".")
        if host == suffix or host.endswith("." + suffix):
            return True
    return False


@dataclass(frozen=True)
class ProxySettings:
    """Where ``http://`` calls go: through ``http_proxy`` unless the host is exempt."""

    http_proxy: str | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def direct(cls) -> ProxySettings:
        """Never use a proxy (the out-of-mesh ``legacy`` client)."""
        return cls()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProxySettings:
        """Read ``HTTP_PROXY``/``http_proxy`` and ``NO_PROXY``/``no_proxy``; reject a malformed proxy."""
        name, raw = next(((n, env[n]) for n in ("HTTP_PROXY", "http_proxy") if env.get(n)), ("", ""))
        if not raw:
            proxy = None
        else:
            try:
                url = URL(raw)
            except ValueError as exc:
                raise ValueError(f"{name}: not a URL: {raw!r} ({exc})") from None
            if url.scheme != "http" or not url.host or url.explicit_port is None:
                raise ValueError(
                    f"{name}: expected http://<host>:<port> (the sidecar's outbound port), got {raw!r}"
                )
            proxy = str(url.origin())
        raw_no = env.get("NO_PROXY") or env.get("no_proxy") or ""
        no_proxy = tuple(e.strip().lower() for e in raw_no.split(",") if e.strip())
        return cls(proxy, no_proxy)

    def proxy_for(self, url: URL) -> str | None:
        """The proxy to send ``url`` through, or None to connect directly."""
        if self.http_proxy is None or url.scheme != "http" or not url.host:
            return None
        if _is_loopback(url.host) or _bypassed(url.host, self.no_proxy):
            return None
        return self.http_proxy


@dataclass(frozen=True)
class Answer:
    """What came back from one call. ``status`` is None when no HTTP answer arrived."""

    url: str
    via: str
    status: int | None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    truncated: bool = False
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200

    def json(self) -> Any:
        """The body as JSON; raises ValueError if it is not."""
        return json.loads(self.body)


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timeout: no answer within {timeout_s:g}s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the server before an answer (reset)"
    return f"{type(exc).__name__}: {exc}"


async def _read_capped(response: aiohttp.ClientResponse, max_body: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while size <= max_body:
        chunk = await response.content.readany()
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    content = b"".join(chunks)
    return content[:max_body], size > max_body


class ServiceClient:
    """Calls other services over one pooled ``aiohttp`` session, honouring ``ProxySettings``.

    The session opens when the app starts and closes when it stops (``add_service_client``).
    """

    def __init__(self, proxies: ProxySettings) -> None:
        self.proxies = proxies
        self._session: aiohttp.ClientSession | None = None

    async def call(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float,
        body: bytes | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> Answer:
        """One request with a total time budget; network failures become ``Answer.error``."""
        if self._session is None:
            raise RuntimeError("ServiceClient used before the app started")
        target = URL(url)
        proxy = self.proxies.proxy_for(target)
        via = proxy or "direct"
        started = time.monotonic()
        try:
            async with self._session.request(
                method,
                target,
                headers=dict(headers or {}),
                data=body,
                proxy=proxy,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                content, truncated = await _read_capped(response, max_body)
                return Answer(
                    url=url,
                    via=via,
                    status=response.status,
                    body=content,
                    headers=dict(response.headers.items()),
                    truncated=truncated,
                    elapsed_s=time.monotonic() - started,
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Answer(
                url=url, via=via, status=None, error=_describe(exc, timeout_s),
                elapsed_s=time.monotonic() - started,
            )

    async def get(self, url: str, *, headers: Mapping[str, str] | None = None, timeout_s: float) -> Answer:
        return await self.call("GET", url, headers=headers, timeout_s=timeout_s)

    async def lifetime(self, _app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx``: one keep-alive session for the app's whole life."""
        async with aiohttp.ClientSession(trust_env=False, auto_decompress=True) as session:
            self._session = session
            yield
            self._session = None


SERVICE_CLIENT = web.AppKey("service_client", ServiceClient)


def add_service_client(app: web.Application, proxies: ProxySettings) -> ServiceClient:
    """Give ``app`` a ``ServiceClient`` (at ``app[SERVICE_CLIENT]``) living as long as the app."""
    client = ServiceClient(proxies)
    app[SERVICE_CLIENT] = client
    app.cleanup_ctx.append(client.lifetime)
    return client
