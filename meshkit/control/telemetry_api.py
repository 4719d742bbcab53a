"""The telemetry part of the REST API: scrape targets and RED queries over `telemetry.TelemetryStore`.

    GET    /api/v1/telemetry?window=S[&reporter=source|destination][&source=W][&destination=SVC]
    GET    /api/v1/telemetry/graph?window=S
    GET    /api/v1/telemetry/series?window=S&step=S[&destination=SVC][&source=W ...][&version=V ...]
           (per step: rate by version, errors/s, duration p50/p95/p99 in ms)
    GET    /api/v1/telemetry/targets
    POST   /api/v1/telemetry/scrape    (one round now: {"scraped_at": epoch seconds})
    DELETE /api/v1/telemetry/targets/{name}

Targets are the connected proxies' admin ports (``xds/stream?admin_port=``) and, on Kubernetes,
the mirrored pods: no client names a URL the control plane would fetch.

Query errors are 400s whose message names the parameter, like every other API error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshkit.config import codes
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.control.telemetry import Scraper

API = "/api/v1/telemetry"
SCRAPER = web.AppKey("telemetry_scraper", Scraper)
MAX_POINTS = 3600


def _bad(field: str, text: str) -> ConfigError:
    return ConfigError([Message(codes.MK0960, Severity.ERROR, "telemetry query", field, text)])


def _seconds(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        raise _bad(name, f"{name}={raw!r} is not a number of seconds") from None
    if not low <= value <= high:
        raise _bad(name, f"{name}={value:g} must be between {low:g} and {high:g} seconds")
    return value


def _scraper(request: web.Request) -> Scraper:
    return request.app[SCRAPER]


async def query(request: web.Request) -> web.Response:
    scraper = _scraper(request)
    window = _seconds(request, "window", 60.0, 1.0, scraper.store.retention)
    reporter = request.query.get("reporter")
    if reporter not in (None, "source", "destination"):
        raise _bad("reporter", f"reporter={reporter!r}: expected source or destination")
    answer = scraper.store.query(window, reporter=reporter, source=request.query.get("source"),
                                 destination=request.query.get("destination"))
    return web.json_response(answer)


async def graph(request: web.Request) -> web.Response:
    scraper = _scraper(request)
    window = _seconds(request, "window", 60.0, 1.0, scraper.store.retention)
    return web.json_response(scraper.store.graph(window))


async def series(request: web.Request) -> web.Response:
    scraper = _scraper(request)
    window = _seconds(request, "window", 60.0, 1.0, scraper.store.retention)
    step = _seconds(request, "step", 1.0, 1.0, window)
    if window / step > MAX_POINTS:
        raise _bad("step", f"window/step gives {window / step:.0f} points; at most {MAX_POINTS}")
    sources = frozenset(request.query.getall("source", [])) or None
    versions = frozenset(request.query.getall("version", [])) or None
    return web.json_response(scraper.store.series(window, step, destination=request.query.get("destination"),
                                                  sources=sources, versions=versions))


async def targets(request: web.Request) -> web.Response:
    scraper = _scraper(request)
    rows = [{"name": name, "url": url, "error": scraper.failures.get(name)}
            for name, url in sorted(scraper.targets.items())]
    return web.json_response({"targets": rows})


async def scrape(request: web.Request) -> web.Response:
    """Scrape every target now: the sample a lab counts from after a config change (or up to, after
    a load), so per-version counts hold every request sent, none from before the change."""
    return web.json_response({"scraped_at": await _scraper(request).scrape_now()})


async def delete_target(request: web.Request) -> web.Response:
    _scraper(request).remove_target(request.match_info["name"])
    return web.json_response({"deleted": True})


def add_routes(app: web.Application, scraper: Scraper) -> None:
    app[SCRAPER] = scraper
    routes: list[tuple[str, str, Callable[[web.Request], Any]]] = [
        ("GET", API, query),
        ("GET", f"{API}/graph", graph),
        ("GET", f"{API}/series", series),
        ("GET", f"{API}/targets", targets),
        ("POST", f"{API}/scrape", scrape),
        ("DELETE", f"{API}/targets/{{name}}", delete_target),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
