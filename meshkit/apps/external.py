"""Stand-ins for the external hosts Istio's egress tasks call, for classrooms without internet.

One process outside the mesh (no sidecar) answers, by ``Host``, for ``httpbin.org`` (the httpbin
app: ``/headers``, ``/delay/5``, ``/status/418``...), ``edition.cnn.com`` (``/politics`` and any
other path: a small HTML page) and ``www.google.com`` (``/``: a small HTML page). Any other host
gets 404 naming the hosts it stands in for. The sidecars reach it because the control plane
gives them the map ``"httpbin.org:80" -> "127.0.0.1:<this port>"`` (snapshot ``egress.hosts``),
never /etc/hosts, so nothing ever tries the real hosts.

The same app is served over HTTPS on a second port (``--tls-port``; ``"httpbin.org:443"`` etc. in
the map), with a certificate from the stand-ins' own CA (``meshkit.runtime.standin_tls``). As the
real site does, ``edition.cnn.com`` over plain HTTP answers ``301`` to its ``https://`` URL, which
is what Istio's "Egress TLS Origination" task shows before and after the sidecar originates TLS.
Every response says how it arrived: ``x-standin-scheme: http|https``.

It must not do: call anything, or import anything from meshkit but the other demo apps.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshkit.apps import httpbin
from meshkit.apps.application import new_application
from meshkit.apps.identity import Workload

HTTPBIN = "httpbin.org"
PAGES = {
    "edition.cnn.com": "<html><head><title>CNN (meshkit stand-in)</title></head>"
                       "<body><h1>edition.cnn.com</h1><p>politics</p></body></html>\n",
    "www.google.com": "<html><head><title>Google (meshkit stand-in)</title></head>"
                      "<body><h1>www.google.com</h1></body></html>\n",
}
HOSTS = (HTTPBIN, *PAGES)
REDIRECT_TO_HTTPS = frozenset({"edition.cnn.com"})  # as the real site: http:// answers 301 to https://
SCHEME_HEADER = "x-standin-scheme"


def _host(request: web.Request) -> str:
    return (request.host or "").rsplit(":", 1)[0].lower() if "]" not in (request.host or "") \
        else (request.host or "").lower()


def build(workload: Workload, *, seed: int | None = None) -> web.Application:
    app = new_application(workload, seed=seed)
    bin_app = httpbin.build(workload, seed=seed)
    app.add_domain(HTTPBIN, bin_app)
    app.add_domain(f"{HTTPBIN}:80", bin_app)

    async def page(request: web.Request) -> web.Response:
        host = _host(request)
        text = PAGES.get(host)
        if text is None:
            return web.Response(status=404, text=f"meshkit external stand-ins serve {', '.join(HOSTS)}; "
                                                 f"not {request.host!r}\n")
        if host in REDIRECT_TO_HTTPS and not request.secure:
            raise web.HTTPMovedPermanently(f"https://{host}{request.path_qs}",
                                           headers={"server": f"{host} (stand-in)"})
        return web.Response(text=text, content_type="text/html", headers={"server": f"{host} (stand-in)"})

    @web.middleware
    async def scheme(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            exc.headers[SCHEME_HEADER] = "https" if request.secure else "http"
            raise
        response.headers[SCHEME_HEADER] = "https" if request.secure else "http"
        return response

    app.middlewares.append(scheme)
    app.router.add_route("*", "/{tail:.*}", page)
    return app
