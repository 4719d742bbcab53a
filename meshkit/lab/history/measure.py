"""Bounded latency runs for lab 09: N sequential requests (or fewer when time is up), timed one by one.

`run_bounded(shape, get, path, requests=..., max_seconds=...)` sends a few warm-up requests (not
counted, they open the kept-alive connections), then up to ``requests`` GETs, stopping early when
``max_seconds`` have passed. It never raises for a failed request: it counts it and keeps the
first reasons. `Measurement` holds what came back: latencies, status codes, answers that really
came from the app (``validate`` on the body), tries and timings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshkit.lab.history.library import Answer, RequestFailed

__all__ = [
    "KEEP_REASONS",
    "MAX_REQUESTS",
    "MAX_SECONDS",
    "WARMUP",
    "Measurement",
    "percentile",
    "run_bounded",
]

MAX_REQUESTS = 5000
MAX_SECONDS = 30.0
WARMUP = 10
KEEP_REASONS = 3


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100.0 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Measurement:
    """One shape's run: per-request latencies (answered requests only), codes and failures."""

    shape: str
    started: float  # wall clock, for telemetry windows
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)
    from_app: int = 0  # answers whose body passed ``validate`` (they came from the destination app)
    tries: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # what the shape observed besides latency

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.failed

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.codes.items() if 200 <= code < 300)

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    def merged(self, other: Measurement) -> Measurement:
        """This run and ``other`` (of the same shape) pooled: latencies, codes and counts added."""
        codes = dict(self.codes)
        for code, count in other.codes.items():
            codes[code] = codes.get(code, 0) + count
        theirs = other.extra.get("proxies_on_path", [])
        on_path = [p for p in self.extra.get("proxies_on_path", []) if p in theirs]
        return Measurement(self.shape, min(self.started, other.started), self.seconds + other.seconds,
                           self.latencies_ms + other.latencies_ms, codes, self.from_app + other.from_app,
                           self.tries + other.tries, self.failed + other.failed,
                           (self.reasons + other.reasons)[:KEEP_REASONS],
                           {**self.extra, **other.extra, "proxies_on_path": on_path})

    def summary(self) -> str:
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.codes.items())) or "none"
        failed = f", {self.failed} failed ({'; '.join(self.reasons)})" if self.failed else ""
        return (f"{self.shape}: {self.requests} requests in {self.seconds:.1f} s, p50 {self.p50_ms:.2f} ms, "
                f"p99 {self.p99_ms:.2f} ms, codes {{{codes}}}{failed}")

    __str__ = summary

    def __repr__(self) -> str:
        return self.summary()


def run_bounded(shape: str, get: Callable[[str], Answer], path: str, *, requests: int, max_seconds: float,
                validate: Callable[[bytes], bool] | None = None, warmup: int = WARMUP) -> Measurement:
    """Time up to ``requests`` sequential GETs of ``path`` within ``max_seconds`` (both bounded)."""
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests: expected 1..{MAX_REQUESTS}, got {requests}")
    if not 0 < max_seconds <= MAX_SECONDS:
        raise ValueError(f"max_seconds: expected more than 0 and at most {MAX_SECONDS:.0f}, "
                         f"got {max_seconds}")
    warm_deadline = time.monotonic() + min(2.0, max_seconds / 4)
    for _ in range(warmup):
        if time.monotonic() > warm_deadline:
            break
        try:
            get(path)
        except RequestFailed:
            break
    result = Measurement(shape, time.time())
    began = time.monotonic()
    deadline = began + max_seconds
    for _ in range(requests):
        if time.monotonic() >= deadline:
            break
        sent = time.perf_counter()
        try:
            answer = get(path)
        except RequestFailed as exc:
            result.failed += 1
            if len(result.reasons) < KEEP_REASONS:
                result.reasons.append(str(exc))
            continue
        result.latencies_ms.append((time.perf_counter() - sent) * 1000.0)
        result.codes[answer.status] = result.codes.get(answer.status, 0) + 1
        result.tries += answer.tries
        if validate is None or validate(answer.body):
            result.from_app += 1
    result.seconds = time.monotonic() - began
    return result
