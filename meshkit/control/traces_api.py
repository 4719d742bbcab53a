"""The traces part of the REST API, over `traces.TraceStore`.

    POST /api/v1/traces/spans                    Zipkin v2 JSON spans (a list), as the sidecars send
    GET  /api/v1/traces?service=S&errors=true&min_duration=D&request_id=R&limit=N
    GET  /api/v1/traces/stats                    stored, received, rejected and dropped counts
    GET  /api/v1/traces/{id}                     one trace (trace id or x-request-id): its spans
    GET  /api/v1/traces/{id}/otlp                the trace as an OTLP/HTTP JSON export request
    GET  /api/v1/traces/{id}/zipkin              the trace as Zipkin v2 JSON
    GET  /api/v1/traces/{id}/explain[?logs=0]    every hop: rule, subset, endpoint, fault, retries,
                                                 timeout, response flags in words, time (`explain`),
                                                 and its access-log lines (`access_logs`; logs=0: not)

Errors are 400/404s whose message names the parameter, like every other API error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshkit.config import codes
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.control.access_logs import merge_access_logs
from meshkit.control.explain import explain
from meshkit.control.telemetry_api import SCRAPER
from meshkit.control.traces import TraceStore, otlp_json, zipkin_json

API = "/api/v1/traces"
CODE_BAD_QUERY = codes.MK0961
STORE = web.AppKey("trace_store", TraceStore)
MAX_LIMIT = 500
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _bad(field: str, text: str) -> ConfigError:
    return ConfigError([Message(CODE_BAD_QUERY, Severity.ERROR, "traces query", field, text)])


def parse_duration(raw: str, field: str = "min_duration") -> float:
    """``250ms``, ``1.5s``, ``2m``, ``500us`` or a bare number of seconds -> seconds."""
    text = raw.strip().lower()
    for unit in ("us", "ms", "s", "m"):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise _bad(field, f"{field}={raw!r}: expected a duration such as 250ms, 1.5s or 2m") from None
    if value < 0:
        raise _bad(field, f"{field}={raw!r}: must not be negative")
    return value


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw in ("", "1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise _bad(name, f"{name}={raw!r}: expected true or false")


def _store(request: web.Request) -> TraceStore:
    return request.app[STORE]


async def post_spans(request: web.Request) -> web.Response:
    try:
        body: Any = await request.json()
    except ValueError:
        raise _bad("body", "body is not valid JSON (expected a list of Zipkin v2 spans)") from None
    if isinstance(body, dict) and isinstance(body.get("spans"), list):
        body = body["spans"]
    if not isinstance(body, list):
        raise _bad("body", "expected a JSON list of Zipkin v2 spans")
    stored, errors = _store(request).add(body)
    return web.json_response({"stored": stored, "rejected": len(body) - stored, "errors": errors},
                             status=202)


async def find(request: web.Request) -> web.Response:
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise _bad("limit", f"limit={query.get('limit')!r}: expected a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad("limit", f"limit={limit}: must be between 1 and {MAX_LIMIT}")
    min_duration = parse_duration(query["min_duration"]) if "min_duration" in query else 0.0
    traces = _store(request).find(service=query.get("service") or None, errors=_flag(request, "errors"),
                                  min_duration=min_duration, request_id=query.get("request_id") or None,
                                  limit=limit)
    return web.json_response({"traces": traces, "stats": _store(request).stats()})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(_store(request).stats())


def _spans(request: web.Request) -> list[dict[str, Any]]:
    trace_id = request.match_info["id"]
    spans = _store(request).trace(trace_id)
    if spans is None:
        raise web.HTTPNotFound(text=f"trace {trace_id}: not among the collector's recent traces "
                                    f"(unsampled, or dropped to stay within its memory bound)\n")
    return spans


async def trace(request: web.Request) -> web.Response:
    spans = _spans(request)
    return web.json_response({"trace_id": spans[0]["traceId"], "spans": spans})


async def trace_otlp(request: web.Request) -> web.Response:
    return web.json_response(otlp_json(_spans(request)))


async def trace_zipkin(request: web.Request) -> web.Response:
    return web.json_response(zipkin_json(_spans(request)))


async def trace_explain(request: web.Request) -> web.Response:
    spans = _spans(request)
    explained = explain(spans)
    scraper = request.app.get(SCRAPER)
    if scraper is not None and request.query.get("logs", "1") != "0":
        await merge_access_logs(explained, spans, dict(scraper.targets))
    return web.json_response(explained)


def add_routes(app: web.Application, store: TraceStore) -> None:
    app[STORE] = store
    routes: list[tuple[str, str, Callable[[web.Request], Any]]] = [
        ("POST", f"{API}/spans", post_spans),
        ("GET", API, find),
        ("GET", f"{API}/stats", stats),
        ("GET", f"{API}/{{id}}", trace),
        ("GET", f"{API}/{{id}}/otlp", trace_otlp),
        ("GET", f"{API}/{{id}}/zipkin", trace_zipkin),
        ("GET", f"{API}/{{id}}/explain", trace_explain),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
