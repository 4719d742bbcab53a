"""``GET /api/v1/console/certificates``: the workload certificate every connected sidecar holds.

The control plane asks each scrape target's admin port for ``/certs`` (the same page `meshkit certs`
prints) on the address the proxy connected from; the URLs come from `telemetry.Scraper` (proxies
name their admin port on their own xDS stream), never from a client. Fetches run concurrently with
a short timeout; a sidecar that does not answer is listed with its error.

It must not sign, rotate or store certificates (that is the CA and the sidecars).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from meshkit.control.telemetry import Scraper

ROUTE = "/api/v1/console/certificates"
TIMEOUT = aiohttp.ClientTimeout(total=2.0)
SCRAPER = web.AppKey("console_scraper", Scraper)
METRICS_PATH = "/stats/prometheus"


def _summary(proxy: str, doc: dict[str, Any]) -> dict[str, Any]:
    chain = doc.get("chain") or []
    leaf = chain[0] if chain else doc  # a --tls-dir sidecar answers the leaf's fields at the top
    return {"proxy": proxy, "mtls": bool(doc.get("mtls", True)), "ready": bool(doc.get("ready")),
            "identity": doc.get("identity"), "serial": leaf.get("serial"), "not_after": leaf.get("not_after"),
            "seconds_left": leaf.get("seconds_left"), "rotate_at": doc.get("rotate_at"),
            "issued": doc.get("certificates_issued"), "error": doc.get("last_error") or doc.get("reason")}


async def _one(session: aiohttp.ClientSession, proxy: str, url: str) -> dict[str, Any]:
    try:
        async with session.get(url.removesuffix(METRICS_PATH) + "/certs") as response:
            doc = await response.json(content_type=None)
        return _summary(proxy, doc)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        reason = str(error) or type(error).__name__
        return {"proxy": proxy, "ready": False, "error": f"admin /certs unreachable: {reason}"}


async def certificates(request: web.Request) -> web.Response:
    targets = sorted(request.app[SCRAPER].targets.items())
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        rows = await asyncio.gather(*(_one(session, name, url) for name, url in targets))
    return web.json_response({"certificates": list(rows)})


def add_certificate_route(app: web.Application, scraper: Scraper) -> None:
    app[SCRAPER] = scraper
    app.router.add_get(ROUTE, certificates)
