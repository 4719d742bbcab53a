"""Fault injection (Envoy's fault filter, Istio's ``VirtualService.http[].fault``).

From the matched route's ``fault`` section: ``delay`` holds ``percent``% of requests for
``fixed_delay_ms`` (flag ``DI``, recorded on the request since no response exists yet), then
``abort`` answers ``percent``% of requests locally with ``http_status`` and the body
``fault filter abort`` (flag ``FI``) instead of forwarding them. Both may apply to one request:
delay first, then abort, as Envoy does. Each percentage is sampled independently with
``random.random()``.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from meshkit.proxy.http import Handler, Request, Response

if TYPE_CHECKING:  # the schema's TypedDicts are types only: never loaded by a running sidecar
    from meshkit.proxy.schema import RouteDoc

ABORT_TEXT = "fault filter abort"


def _sampled(percent: float) -> bool:
    return percent >= 100.0 or random.random() * 100.0 < percent


def check_fault(route: dict[str, Any], where: str) -> None:
    """Validate a route's ``fault`` section (for snapshot loading); errors name the key path."""
    spec = route.get("fault")
    if spec is None:
        return
    where = f"{where}.fault"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected an object or null, got {spec!r}")
    delay, abort = spec.get("delay"), spec.get("abort")
    for name, section, key, low, high in (
        ("delay", delay, "fixed_delay_ms", 0, None),
        ("abort", abort, "http_status", 200, 599),
    ):
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ValueError(f"{where}.{name}: expected an object or null, got {section!r}")
        value = section.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            bound = f"{low}-{high}" if high is not None else f">= {low}"
            raise ValueError(f"{where}.{name}.{key}: expected an integer {bound}, got {value!r}")
        percent = section.get("percent", 100.0)
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise ValueError(f"{where}.{name}.percent: expected a number 0-100, got {percent!r}")


def has_fault(route: RouteDoc) -> bool:
    """Does this route need the fault filter (pipeline predicate)?"""
    return route.get("fault") is not None


async def fault(request: Request, call_next: Handler) -> Response:
    route = request.route
    spec = route.get("fault") if route is not None else None
    if spec is None:
        return await call_next(request)
    delay = spec.get("delay")
    if delay is not None and _sampled(delay.get("percent", 100.0)):
        await asyncio.sleep(delay["fixed_delay_ms"] / 1000.0)
        request.flags = f"{request.flags},DI" if request.flags else "DI"
    abort = spec.get("abort")
    if abort is not None and _sampled(abort.get("percent", 100.0)):
        return Response.local(abort["http_status"], ABORT_TEXT, "FI")
    return await call_next(request)
