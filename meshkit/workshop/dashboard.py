"""The instructor's dashboard page: static HTML, JS and CSS (in ``static/``) and the headers they need.

The page holds no data: its script reads the instructor token from the URL fragment (then removes
it from the address bar, so it never shows on a projector), follows ``/api/instructor/events``
(SSE read through ``fetch`` so the token travels in a header, not in a URL) and renders every
name, step and reason with ``textContent`` — never as HTML. A strict Content-Security-Policy (no
inline script, same-origin only) is a second wall should an escaping bug ever slip in.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _asset(name: str) -> str:
    return resources.files("meshkit.workshop").joinpath("static", name).read_text(encoding="utf-8")


async def _harden(_request: web.Request, response: web.StreamResponse) -> None:
    """CSP and friends on every answer, errors included (an ``on_response_prepare`` hook)."""
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")


async def page(_request: web.Request) -> web.Response:
    return web.Response(text=_asset("dashboard.html"), content_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    return web.Response(text=_asset(name), content_type=_STATIC[name], headers={"Cache-Control": "no-cache"})


async def root(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard")


def add_routes(app: web.Application) -> None:
    app.on_response_prepare.append(_harden)
    app.router.add_get("/", root)
    app.router.add_get("/dashboard", page)
    app.router.add_get("/static/{name}", static)
