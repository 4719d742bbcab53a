"""An httpbin-like echo service (Istio's samples use httpbin on port 8000).

``/status/{codes}`` (``418``, ``200,503`` or weighted ``200:0.9,503:0.1``), ``/delay/{s}``
(capped at 30 s), ``/bytes/{n}`` (n random bytes, ``?seed=`` repeatable, at most 100 KiB as
httpbin's; Istio's performance method uses 1 KB answers), ``/headers``, ``/get``,
``/anything[/{path}]`` and ``/post``-style echo routes, ``/ip``, ``/uuid``, ``/user-agent``.
Every JSON answer carries ``podname`` and ``version``; ``/headers`` shows exactly what reached
the app, so a lesson can see what the sidecars added (``x-request-id``,
``x-forwarded-client-cert``, trace headers).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from typing import Any

from aiohttp import web

from meshkit.apps.application import new_application
from meshkit.apps.identity import Workload, reply

MAX_DELAY_S = 30.0
MAX_BYTES = 100 * 1024  # httpbin's own cap on /bytes/{n}
NO_BODY_STATUSES = frozenset({204, 304})
CHOOSER = web.AppKey("status_chooser", random.Random)


def headers_of(request: web.Request) -> dict[str, str]:
    """The request headers as received (repeated headers joined with ``,``)."""
    merged: dict[str, str] = {}
    for name, value in request.headers.items():
        merged[name] = f"{merged[name]},{value}" if name in merged else value
    return merged


def origin_of(request: web.Request) -> str:
    forwarded = request.headers.get("X-Forwarded-For")
    return forwarded.split(",")[0].strip() if forwarded else (request.remote or "")


def _request_echo(request: web.Request) -> dict[str, Any]:
    return {
        "args": dict(request.query),
        "headers": headers_of(request),
        "origin": origin_of(request),
        "url": str(request.url),
    }


async def get(request: web.Request) -> web.Response:
    return reply(request, _request_echo(request))


async def headers(request: web.Request) -> web.Response:
    return reply(request, {"headers": headers_of(request)})


async def ip(request: web.Request) -> web.Response:
    return reply(request, {"origin": origin_of(request)})


async def new_uuid(request: web.Request) -> web.Response:
    return reply(request, {"uuid": str(uuid.uuid4())})


async def user_agent(request: web.Request) -> web.Response:
    return reply(request, {"user-agent": request.headers.get("User-Agent")})


async def anything(request: web.Request) -> web.Response:
    """Echo method, path, query, headers and body (as text, and as JSON or form when it is one)."""
    raw = await request.read()
    data = raw.decode("utf-8", errors="replace")
    parsed_json: Any = None
    form: dict[str, str] = {}
    if request.content_type == "application/json" and raw:
        try:
            parsed_json = json.loads(raw)
        except ValueError:
            parsed_json = None
    elif request.content_type == "application/x-www-form-urlencoded":
        form = {k: str(v) for k, v in (await request.post()).items()}
    echo = _request_echo(request)
    echo.update(method=request.method, path=request.path, data=data, json=parsed_json, form=form)
    return reply(request, echo)


def _parse_codes(request: web.Request, raw: str) -> tuple[list[int], list[float]]:
    codes: list[int] = []
    weights: list[float] = []
    for part in raw.split(","):
        code_text, _, weight_text = part.strip().partition(":")
        try:
            code = int(code_text)
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            code, weight = 0, 0.0
        if not 200 <= code <= 599 or not weight > 0:
            raise web.HTTPBadRequest(
                text=f"{request.path}: path parameter 'codes' must be status codes 200-599, optionally "
                f"weighted like 200:0.9,503:0.1; got {part.strip()!r}"
            )
        codes.append(code)
        weights.append(weight)
    return codes, weights


async def status(request: web.Request) -> web.Response:
    codes, weights = _parse_codes(request, request.match_info["codes"])
    code = codes[0] if len(codes) == 1 else request.app[CHOOSER].choices(codes, weights)[0]
    if code in NO_BODY_STATUSES:
        return web.Response(status=code)
    return reply(request, {"status": code}, status=code)


async def delay(request: web.Request) -> web.Response:
    raw = request.match_info["seconds"]
    try:
        asked = float(raw)
    except ValueError:
        asked = float("nan")
    if not asked >= 0:  # also rejects NaN
        raise web.HTTPBadRequest(
            text=f"{request.path}: path parameter 'seconds' must be a number >= 0, got {raw!r}"
        )
    waited = min(asked, MAX_DELAY_S)
    await asyncio.sleep(waited)
    echo = _request_echo(request)
    echo["delay"] = waited
    return reply(request, echo)


async def random_bytes(request: web.Request) -> web.Response:
    raw, seed = request.match_info["n"], request.query.get("seed")
    if not raw.isdigit() or (seed is not None and not seed.lstrip("-").isdigit()):
        raise web.HTTPBadRequest(
            text=f"{request.path}: 'n' must be a whole number of bytes and 'seed' an integer; "
            f"got n={raw!r}, seed={seed!r}"
        )
    size = min(int(raw), MAX_BYTES)
    chooser = random.Random(int(seed)) if seed is not None else random
    return web.Response(body=chooser.randbytes(size), content_type="application/octet-stream")


def build(workload: Workload, *, seed: int | None = None) -> web.Application:
    app = new_application(workload, seed=seed)
    app[CHOOSER] = random.Random(seed)
    app.router.add_get("/get", get)
    app.router.add_get("/headers", headers)
    app.router.add_get("/ip", ip)
    app.router.add_get("/uuid", new_uuid)
    app.router.add_get("/user-agent", user_agent)
    for method, path in (("POST", "/post"), ("PUT", "/put"), ("PATCH", "/patch"), ("DELETE", "/delete")):
        app.router.add_route(method, path, anything)
    app.router.add_route("*", "/anything", anything)
    app.router.add_route("*", "/anything/{path:.*}", anything)
    app.router.add_route("*", "/status/{codes}", status)
    app.router.add_get("/delay/{seconds}", delay)
    app.router.add_get("/bytes/{n}", random_bytes)
    return app
