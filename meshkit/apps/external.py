"""Stand-ins for the external hosts Istio's egress tasks call, for classrooms without internet.

One process outside the mesh (no sidecar) answers, by ``Host``, for ``httpbin.org`` (the httpbin
app: ``/headers``, ``/delay/5``, ``/status/418``...), ``edition.cnn.com`` (``/politics`` and any
other path: a small HTML page) and ``www.google.com`` (``/``: a small HTML page). Any other host
gets 404 naming the hosts it stands in for. The sidecars reach it because the control plane
gives them the map ``"httpbin.org:80" -> "127.0.0.1:<this port>"`` (snapshot ``egress.hosts``),
never /etc/hosts, so nothing ever tries the real hosts.

It must not do: call anything, or import anything from meshkit but the other demo apps.
"""

from __future__ import annotations

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
        return web.Response(text=text, content_type="text/html", headers={"server": f"{host} (stand-in)"})

    app.router.add_route("*", "/{tail:.*}", page)
    return app
