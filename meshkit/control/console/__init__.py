"""The web console's routes: the static page at ``/ui`` and the one API call only it needs.

    GET /ui/, /ui                        the single page (``static/index.html``; at ``/ui`` with
                                         ``<base href="ui/">``, since a proxy may follow redirects itself)
    GET /ui/{name}                       its scripts and styles (a fixed list, see `FILES`)
    GET /ui/vendor/plotly.min.js         plotly.js from the installed ``plotly`` Python package
    GET /api/v1/console/certificates     every connected sidecar's workload certificate (admin token)
    GET /api/v1/events                   live updates: what changed, as Server-Sent Events (`events`)

The static files hold no data, so they are public (`meshkit.control.auth.PUBLIC_ROUTES`); the page
reads the admin token from its URL fragment (``/ui#token=...``, never sent to the server) and sends
it as ``Authorization: Bearer`` on every API call (docs/console.md, docs/security.md). Files are read
from the package once, at start; nothing under ``/ui`` reads the file system by a client's name.

It must not hold console logic of its own beyond serving files and gathering certificates: the
page reads the same REST API the CLI uses.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.resources
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from meshkit.control.console.certificates import add_certificate_route
from meshkit.control.telemetry import Scraper

PREFIX = "/ui"
FILES = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css",
         "graph.js": "text/javascript", "config.js": "text/javascript", "timeline.js": "text/javascript",
         "wizards.js": "text/javascript"}
PLOTLY = "vendor/plotly.min.js"
GZIP_OVER = 64 * 1024  # bytes: only plotly.js is larger
# the page is ours alone: no frames, no inline script, no other origin (the token must not leak)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str


def load_files() -> dict[str, StaticFile]:
    """The console's files from the package, and plotly.js from the installed plotly package."""
    static = importlib.resources.files(__name__) / "static"
    files = {name: StaticFile(static.joinpath(name).read_bytes(), kind) for name, kind in FILES.items()}
    plotly = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
    files[PLOTLY] = StaticFile(plotly.read_bytes(), "text/javascript")
    return files


def _serve(files: dict[str, StaticFile]) -> Callable[[web.Request], Awaitable[web.Response]]:
    compressed: dict[str, bytes] = {}  # gzip of the large files, made on their first request

    async def handler(request: web.Request) -> web.Response:
        name = request.match_info.get("name", "" if request.path == PREFIX else "index.html")
        found = files.get(name)
        if found is None:
            raise web.HTTPNotFound(text=f"{PREFIX}/{name}: no such console file\n")
        charset = "utf-8" if found.content_type.startswith("text/") else None
        headers = dict(SECURITY_HEADERS)
        body = found.body
        if len(body) > GZIP_OVER and "gzip" in request.headers.get("Accept-Encoding", ""):
            if name not in compressed:
                compressed[name] = await asyncio.to_thread(gzip.compress, body, 6)
            body = compressed[name]
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
        return web.Response(body=body, content_type=found.content_type, charset=charset, headers=headers)

    return handler


def add_routes(app: web.Application, scraper: Scraper) -> None:
    """Register ``/ui`` (public static files) and ``/api/v1/console/certificates``."""
    files = load_files()
    # every URL in the page is relative; at /ui (no slash) they need <base href="ui/">. Not a redirect:
    # jupyter-server-proxy follows redirects itself, so the browser would never see the new path
    page = files["index.html"]
    files[""] = StaticFile(page.body.replace(b"<head>", b'<head>\n<base href="ui/">', 1), page.content_type)
    handler = _serve(files)
    app.router.add_get(PREFIX, handler)
    app.router.add_get(f"{PREFIX}/", handler)
    app.router.add_get(f"{PREFIX}/{{name:[A-Za-z0-9_./-]+}}", handler)
    add_certificate_route(app, scraper)
