"""Local rate limiting on the inbound side (Envoy's ``local_ratelimit`` HTTP filter).

``TokenBucket`` is Envoy's token bucket: it starts full with ``max_tokens``; every
``fill_interval_ms`` it gains ``tokens_per_fill`` (never above ``max_tokens``); each request
takes one token. Fills happen in whole intervals, as with Envoy's fill timer, but are computed
lazily from the clock instead of by a timer task. One bucket per snapshot (built by
``TokenBucket.from_snapshot`` from ``inbound.rate_limit``); a request that finds it empty gets
429 ``local_rate_limited`` with flag ``RL`` and never reaches the app.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from meshkit.proxy.http import Handler, Request, Response, answered

if TYPE_CHECKING:  # types only: the snapshot module imports this one
    from meshkit.proxy.snapshot import Snapshot

RATE_LIMITED_TEXT = "local_rate_limited"
MIN_FILL_INTERVAL_MS = 50  # Envoy rejects shorter fill intervals


class TokenBucket:
    __slots__ = ("fill_interval", "last_fill", "max_tokens", "response_headers", "tokens", "tokens_per_fill")

    def __init__(self, max_tokens: int, tokens_per_fill: int, fill_interval_ms: int,
                 response_headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.response_headers = response_headers  # added to every 429 (Envoy's response_headers_to_add)
        self.max_tokens = max_tokens
        self.tokens_per_fill = tokens_per_fill
        self.fill_interval = fill_interval_ms / 1000.0
        self.tokens = max_tokens
        self.last_fill: float | None = None  # anchored at the first request

    @classmethod
    def from_snapshot(cls, spec: dict[str, Any] | None) -> TokenBucket | None:
        """Build from ``inbound.rate_limit`` (None = no limit); errors name the key path."""
        if spec is None:
            return None
        where = "inbound.rate_limit"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object or null, got {spec!r}")
        values = {}
        limits = (("max_tokens", 1), ("tokens_per_fill", 1), ("fill_interval_ms", MIN_FILL_INTERVAL_MS))
        for key, minimum in limits:
            value = spec.get(key, 1 if key == "tokens_per_fill" else None)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")
            values[key] = value
        headers = spec.get("response_headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError(f"{where}.response_headers: expected an object of strings, got {headers!r}")
        return cls(values["max_tokens"], values["tokens_per_fill"], values["fill_interval_ms"],
                   tuple((k.lower(), v) for k, v in headers.items()))

    def try_consume(self, now: float) -> bool:
        """Take one token at time ``now`` (``time.monotonic()`` seconds); False when empty."""
        last = self.last_fill
        if last is None:
            self.last_fill = now
        elif now - last >= self.fill_interval:
            fills = int((now - last) // self.fill_interval)
            self.tokens = min(self.max_tokens, self.tokens + fills * self.tokens_per_fill)
            self.last_fill = last + fills * self.fill_interval
        if self.tokens <= 0:
            return False
        self.tokens -= 1
        return True


def has_rate_limit(snapshot: Snapshot) -> bool:
    """Does this snapshot need the rate-limit filter (pipeline predicate)?"""
    return snapshot.rate_limiter is not None


def ratelimit(request: Request, call_next: Handler) -> Awaitable[Response]:
    bucket = request.config.rate_limiter
    if bucket is None or bucket.try_consume(time.monotonic()):
        return call_next(request)
    response = Response.local(429, RATE_LIMITED_TEXT, "RL")
    for name, value in bucket.response_headers:
        response.headers.set(name, value)
    return answered(response)
