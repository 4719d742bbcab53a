"""Waiting in tests: poll for the condition with a deadline, never sleep a fixed time.

A fixed sleep is either too short on a loaded 2-core CI (red for no reason) or too long everywhere
else; a wall-clock upper bound fails the same way. Poll for what the test needs instead:

    wait_until(lambda: proxy.upstream.cx_active >= 1, 5, "the request to reach the upstream")
    await async_wait_until(lambda: dump()["version"] == "d3", 15, "the reconnect")

Both return the predicate's first truthy value and fail naming ``what`` and the time waited.
``wait_until_passes`` retries a check that raises until it passes (a lab check reading telemetry
that lags a scrape behind) and re-raises its last failure at the deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.02


def wait_until(predicate: Callable[[], T], within: float, what: str, *, interval: float = INTERVAL) -> T:
    """Call ``predicate`` until it returns something truthy (returned) or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


def wait_until_passes(check: Callable[[], T], within: float, *,
                      errors: tuple[type[BaseException], ...] = (AssertionError,),
                      interval: float = 0.5) -> T:
    """Call ``check`` until it returns without raising one of ``errors``; at the deadline its last error."""
    deadline = time.monotonic() + within
    while True:
        try:
            return check()
        except errors:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], T | Awaitable[T]], within: float, what: str, *,
                           interval: float = INTERVAL) -> T:
    """`wait_until` for a running event loop; ``predicate`` may be a coroutine function."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what} (last value: {value!r})")
        await asyncio.sleep(interval)
