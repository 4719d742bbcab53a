"""Steady traffic through the ingress gateway, as lessons need it (``meshkit load``, ``mesh.load()``).

Requests are paced open-loop at ``rps`` (a slow answer does not slow the sender down, as with
real users), bounded by ``duration`` and by ``max_in_flight``. ``users`` maps a user name to the
fraction of requests sent signed in as that user (Bookinfo's ``user`` cookie, which productpage
turns into the ``end-user`` header Istio's routing lessons match on).

Use it from asyncio (`LoadGenerator.run`) or from a notebook or script (`start()` / `stop()`,
which run the same loop in a background thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

MAX_DURATION = 3600.0


def parse_users(spec: str | None) -> dict[str, float]:
    """``"jason:10%,kim:5%"`` -> ``{"jason": 0.1, "kim": 0.05}``; ValueError names the bad part."""
    users: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, sep, share = part.partition(":")
        share = share.strip().rstrip("%")
        try:
            value = float(share) / 100.0
        except ValueError:
            value = -1.0
        if not sep or not name or not 0.0 <= value <= 1.0:
            raise ValueError(f"--users {part!r}: expected NAME:PERCENT, e.g. jason:10%")
        users[name.strip()] = value
    if sum(users.values()) > 1.0 + 1e-9:
        raise ValueError(f"--users {spec!r}: the shares add up to more than 100%")
    return users


@dataclass
class LoadStats:
    """What the generator sent and got back (thread-safe snapshots via `LoadGenerator.stats`)."""

    started: float = 0.0
    sent: int = 0
    completed: int = 0
    codes: Counter[str] = field(default_factory=Counter)  # "200", "503", "error"
    by_user: Counter[str] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    skipped: int = 0  # not sent because max_in_flight was reached

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

        elapsed = max(time.monotonic() - self.started, 1e-9) if self.started else 0.0
        errors = sum(n for code, n in self.codes.items() if code == "error" or code.startswith("5"))
        return {
            "sent": self.sent, "completed": self.completed, "skipped": self.skipped,
            "rps": round(self.completed / elapsed, 2) if elapsed else 0.0,
            "codes": dict(sorted(self.codes.items())), "users": dict(sorted(self.by_user.items())),
            "error_rate": round(errors / self.completed, 4) if self.completed else 0.0,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        }


class LoadGenerator:
    def __init__(self, url: str, *, rps: float = 10.0, duration: float | None = None,
                 users: dict[str, float] | None = None, max_in_flight: int = 200,
                 timeout: float = 30.0) -> None:
        if not 0 < rps <= 2000:
            raise ValueError(f"rps must be in (0, 2000], got {rps}")
        if duration is not None and not 0 < duration <= MAX_DURATION:
            raise ValueError(f"duration must be in (0, {MAX_DURATION:.0f}] seconds, got {duration}")
        self.url = url
        self.rps = rps
        self.duration = duration if duration is not None else MAX_DURATION  # always bounded
        self.users = users or {}
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._stats.summary()

    def _pick_user(self) -> str | None:
        x = random.random()
        for name, share in self.users.items():
            if x < share:
                return name
            x -= share
        return None

    async def run(self) -> dict[str, Any]:
        """Send until ``duration`` passes or `stop()` is called; returns the summary."""
        with self._lock:
            self._stats.started = time.monotonic()
        interval = 1.0 / self.rps
        in_flight: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        connector = aiohttp.TCPConnector(limit=self.max_in_flight)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            start = time.monotonic()
            n = 0
            while not self._stop.is_set():
                due = start + n * interval
                now = time.monotonic()
                if now - start >= self.duration:
                    break
                if due > now:
                    await asyncio.sleep(min(due - now, 0.1))
                    continue
                n += 1
                if len(in_flight) >= self.max_in_flight:
                    with self._lock:
                        self._stats.skipped += 1
                    continue
                task = asyncio.ensure_future(self._one(session, self._pick_user()))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight, timeout=self.timeout)
        return self.stats

    async def _one(self, session: aiohttp.ClientSession, user: str | None) -> None:
        cookies = {"user": user} if user else None
        with self._lock:
            self._stats.sent += 1
            self._stats.by_user[user or "(anonymous)"] += 1
        began = time.monotonic()
        try:
            async with session.get(self.url, cookies=cookies) as resp:
                await resp.read()
                code = str(resp.status)
        except (TimeoutError, aiohttp.ClientError, OSError):
            code = "error"
        with self._lock:
            self._stats.completed += 1
            self._stats.codes[code] += 1
            self._stats.latencies_ms.append((time.monotonic() - began) * 1000.0)

    # -- background use (notebooks, scripts) ------------------------------------------------

    def start(self) -> LoadGenerator:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self.run()), name="meshkit-load",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 35.0) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.stats

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
