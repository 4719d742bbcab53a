"""The "library" shape of lab 09: resilience coded into the client itself, plus a plain proxied client.

`ResilientClient` is a deliberately small stand-in for Finagle, Hystrix + Ribbon: it knows the
destination's endpoints (the apps' own ports, as a registry such as Eureka would list them),
balances round-robin over them, gives every try a timeout and retries connect failures and
502/503/504 answers, all inside the calling process. That is the point the lab makes: every
language and framework needs its own copy of this code, and the mesh never sees the traffic.

`ProxiedClient` is the opposite: a plain keep-alive HTTP client that sends every request to one
proxy (a node agent or a sidecar's outbound port) with the service's name in ``Host`` and leaves
routing, retries and timeouts to the proxy.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass, field

__all__ = ["RETRY_STATUSES", "Answer", "ProxiedClient", "RequestFailed", "ResilientClient"]

RETRY_STATUSES = frozenset({502, 503, 504})


class RequestFailed(Exception):
    """No answer (after every allowed try); the text names the endpoint and the cause."""


@dataclass
class Answer:
    """One request's outcome: the HTTP status, the body and how many tries it took."""

    status: int
    body: bytes
    tries: int = 1


@dataclass
class _Connection:
    host: str
    port: int
    timeout: float
    conn: http.client.HTTPConnection | None = None

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """GET over a kept-alive connection; one reconnect if the kept connection went stale."""
        for fresh in (False, True):
            if self.conn is None or fresh:
                self.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", path, headers=headers)
                response = self.conn.getresponse()
                body = response.read()
                if response.will_close:
                    self.close()
                return response.status, body
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if fresh:
                    raise
            except (OSError, http.client.HTTPException):
                self.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class ResilientClient:
    """Client-side load balancing, per-try timeouts and retries, in the caller's own process.

    ``endpoints`` are ``(host, port)`` pairs of the destination app itself (no proxy).
    ``attempts`` counts tries in all (3 = the first try plus two retries, Istio's default).
    """

    endpoints: list[tuple[str, int]]
    attempts: int = 3
    per_try_timeout: float = 2.0
    retry_statuses: frozenset[int] = RETRY_STATUSES
    requests: int = 0
    retries: int = 0
    failures: int = 0
    _pool: list[_Connection] = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("endpoints: the library needs at least one (host, port) of the destination")
        if self.attempts < 1:
            raise ValueError(f"attempts: must be at least 1, got {self.attempts}")
        if self.per_try_timeout <= 0:
            raise ValueError(f"per_try_timeout: must be positive, got {self.per_try_timeout}")
        self._pool = [_Connection(h, p, self.per_try_timeout) for h, p in self.endpoints]

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        """GET ``path`` from the next endpoint; retry on another one on failure or 502/503/504."""
        self.requests += 1
        problem = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                self.retries += 1
            endpoint = self._pool[self._next % len(self._pool)]
            self._next += 1
            try:
                status, body = endpoint.get(path, dict(headers or {}))
            except (OSError, http.client.HTTPException) as exc:
                kind = "timed out" if isinstance(exc, socket.timeout | TimeoutError) else "failed"
                problem = f"{endpoint.host}:{endpoint.port}{path} {kind} ({exc.__class__.__name__}: {exc})"
                continue
            if status in self.retry_statuses and attempt < self.attempts:
                problem = f"{endpoint.host}:{endpoint.port}{path} answered {status}"
                continue
            return Answer(status, body, attempt)
        self.failures += 1
        raise RequestFailed(f"{self.attempts} tries, the last: {problem}")

    def close(self) -> None:
        for endpoint in self._pool:
            endpoint.close()


@dataclass
class ProxiedClient:
    """Every request to one proxy port with ``Host: authority``; the proxy does the rest."""

    proxy_host: str
    proxy_port: int
    authority: str
    timeout: float = 10.0
    _conn: _Connection | None = None

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        if self._conn is None:
            self._conn = _Connection(self.proxy_host, self.proxy_port, self.timeout)
        try:
            status, body = self._conn.get(path, {"Host": self.authority, **(headers or {})})
        except (OSError, http.client.HTTPException) as exc:
            raise RequestFailed(f"proxy {self.proxy_host}:{self.proxy_port} ({self.authority}{path}): "
                                f"{exc.__class__.__name__}: {exc}") from None
        return Answer(status, body)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

