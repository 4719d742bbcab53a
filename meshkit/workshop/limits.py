"""Room limits the instructor controls: per-attendee result rate limits and connection timeouts.

`RoomLimits` bundles the numbers (set at start, ``meshkit workshop serve --results-per-second`` …);
`ResultLimiter` is a token bucket per attendee: ``burst`` results at once, then ``rate`` per second.
A refused request is counted per attendee (the dashboard shows the counts) and answered with
``429`` and ``Retry-After`` by the server. This module holds no sockets and does no I/O.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RoomLimits:
    """The numbers a room runs with. Timeouts are seconds."""

    results_per_second: float = 2.0   # sustained result requests per attendee
    results_burst: int = 30           # results at once (a lab re-checked on open, Run All)
    idle_timeout: float = 30.0        # a connection with no request (or half a request) is closed
    body_timeout: float = 10.0        # a request body that stops arriving is a 408
    stream_write_timeout: float = 10.0  # a dashboard that stops reading its live stream is dropped
    stream_send_buffer: int = 256 * 1024  # kernel send buffer of a live stream (bounds a slow reader)

    def __post_init__(self) -> None:
        if not 0 < self.results_per_second <= 1000:
            raise ValueError(f"results_per_second: expected 0 < rate <= 1000, got {self.results_per_second}")
        if not 1 <= self.results_burst <= 10_000:
            raise ValueError(f"results_burst: expected 1..10000, got {self.results_burst}")
        for name in ("idle_timeout", "body_timeout", "stream_write_timeout"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{name}: expected 0 < seconds <= 3600, got {getattr(self, name)}")


class ResultLimiter:
    """A token bucket per attendee; `refused` counts the requests turned away, per attendee."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # attendee -> (tokens, updated)
        self.refused: dict[str, int] = {}

    def take(self, attendee_id: str, now: float | None = None) -> float:
        """0 when the request may go ahead (a token is used), else the seconds until one is free."""
        now = time.monotonic() if now is None else now
        tokens, updated = self._buckets.get(attendee_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
        if tokens >= 1.0:
            self._buckets[attendee_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[attendee_id] = (tokens, now)
        self.refused[attendee_id] = self.refused.get(attendee_id, 0) + 1
        return (1.0 - tokens) / self.rate

    def forget(self, attendee_id: str) -> None:
        self._buckets.pop(attendee_id, None)

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait)))
