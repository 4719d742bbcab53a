"""The apply-to-effect timeline over REST (see `timeline`).

    GET /api/v1/history/{n}/timeline[?wait=SECONDS]

``wait`` (0-60) first waits until revision n is no longer ``pending``: every connected proxy whose
snapshot it changed has ACKed or NACKed it (or a later revision replaced it). The answer then says
``"waited": true|false`` (false: the wait ran out). This module only reads; the push server and the
telemetry scraper feed the record.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from meshkit.config import codes
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.control.push import PushServer
from meshkit.control.store import ConfigStore, NotFoundError
from meshkit.control.timeline import describe

API = "/api/v1/history/{number}/timeline"
MAX_WAIT_SECONDS = 60.0
POLL_SECONDS = 0.02
PARTS = web.AppKey("timeline_parts", tuple)


def _bad(field: str, text: str) -> ConfigError:
    return ConfigError([Message(codes.MK0940, Severity.ERROR, "timeline query", field, text)])


def timeline_doc(store: ConfigStore, push: PushServer, number: int) -> dict[str, Any]:
    """Revision ``number``'s timeline (404 when neither the store nor the timeline knows it)."""
    entry = push.timeline.get(number)
    try:
        info = store.revision_info(number)
        stored, summary = info.timestamp, info.summary
    except NotFoundError:
        if entry is None:
            raise
        stored, summary = None, "(pruned from the history)"
    return describe(entry, number, stored=stored, summary=summary, proxies=push.proxy_status(),
                    compiled_revision=push.timeline.compiled_revision)


async def get_timeline(request: web.Request) -> web.Response:
    store, push = request.app[PARTS]
    raw = request.match_info["number"]
    if not raw.isdigit():
        raise _bad("revision", f"revision: expected a number, got {raw!r}")
    number = int(raw)
    doc = timeline_doc(store, push, number)
    wait = request.query.get("wait")
    if wait is not None:
        try:
            seconds = float(wait)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_WAIT_SECONDS:
            raise _bad("wait", f"wait: expected seconds between 0 and {MAX_WAIT_SECONDS:g}, got {wait!r}")
        deadline = time.monotonic() + seconds
        while (doc["state"] == "pending" or push.busy) and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            doc = timeline_doc(store, push, number)
        doc["waited"] = doc["state"] != "pending" and not push.busy
    return web.json_response(doc)


def add_routes(app: web.Application, store: ConfigStore, push: PushServer) -> None:
    app[PARTS] = (store, push)
    app.router.add_get(API, get_timeline)
