"""Fault knobs every demo app offers, for outlier-detection and timeout lessons.

``/admin/fail?rate=0.5&code=503`` answers that fraction of requests with the code
(``rate=0`` restores), ``/admin/delay?seconds=4`` delays every request, ``/admin/state``
shows the knobs and counters, ``/admin/reset`` clears everything. GET and POST both work,
so a lesson can flip a knob with a plain ``curl``. The knobs never touch ``/admin/*`` nor
the health endpoints: a failing instance stays controllable and its process stays "ready",
exactly the case outlier detection (not readiness) must catch.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meshkit.apps.identity import error_reply, reply

MAX_DELAY_S = 60.0
EXEMPT_PATHS = ("/healthz", "/health")


@dataclass
class Faults:
    """The fault knobs and request counters of one app instance."""

    rng: random.Random = field(default_factory=random.Random)
    fail_rate: float = 0.0
    fail_code: int = 503
    delay_s: float = 0.0
    served: int = 0
    failed: int = 0

    def should_fail(self) -> bool:
        return self.fail_rate > 0 and self.rng.random() < self.fail_rate

    def state(self) -> dict[str, Any]:
        return {
            "fail": {"rate": self.fail_rate, "code": self.fail_code},
            "delay_seconds": self.delay_s,
            "requests": {"served": self.served, "failed_injected": self.failed},
        }


FAULTS = web.AppKey("faults", Faults)


def is_exempt(path: str) -> bool:
    return path.startswith("/admin/") or path in EXEMPT_PATHS


@web.middleware
async def fault_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Apply the delay, then the failure rate, to every request but the admin and health ones."""
    if is_exempt(request.path):
        return await handler(request)
    faults = request.app[FAULTS]
    faults.served += 1
    if faults.delay_s > 0:
        await asyncio.sleep(faults.delay_s)
    if faults.should_fail():
        faults.failed += 1
        return error_reply(request, faults.fail_code, f"injected failure (rate {faults.fail_rate:g})")
    return await handler(request)


def _number(request: web.Request, name: str, low: float, high: float, default: float | None) -> float:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise web.HTTPBadRequest(text=f"{request.path}: query parameter '{name}' is required")
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also rejects NaN
        raise web.HTTPBadRequest(
            text=f"{request.path}: query parameter '{name}' must be a number from {low:g} to {high:g}, "
            f"got {raw!r}"
        )
    return value


def _status_code(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 400 <= int(raw) <= 599:
        raise web.HTTPBadRequest(
            text=f"{request.path}: query parameter '{name}' must be an HTTP error status 400-599, got {raw!r}"
        )
    return int(raw)


async def set_fail(request: web.Request) -> web.Response:
    faults = request.app[FAULTS]
    rate = _number(request, "rate", 0.0, 1.0, None)
    code = _status_code(request, "code", 503)
    faults.fail_rate, faults.fail_code = rate, code
    return reply(request, faults.state())


async def set_delay(request: web.Request) -> web.Response:
    faults = request.app[FAULTS]
    faults.delay_s = _number(request, "seconds", 0.0, MAX_DELAY_S, None)
    return reply(request, faults.state())


async def show_state(request: web.Request) -> web.Response:
    return reply(request, request.app[FAULTS].state())


async def reset(request: web.Request) -> web.Response:
    faults = request.app[FAULTS]
    faults.fail_rate, faults.fail_code, faults.delay_s = 0.0, 503, 0.0
    faults.served = faults.failed = 0
    return reply(request, faults.state())


def add_fault_control(app: web.Application, seed: int | None) -> None:
    """Attach the knobs (seeded, for reproducible failure sequences) and their admin routes."""
    app[FAULTS] = Faults(rng=random.Random(seed))
    for path, handler in (("/admin/fail", set_fail), ("/admin/delay", set_delay), ("/admin/reset", reset)):
        app.router.add_get(path, handler)
        app.router.add_post(path, handler)
    app.router.add_get("/admin/state", show_state)
