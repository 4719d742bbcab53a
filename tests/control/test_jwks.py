"""The control plane fetches RequestAuthentication ``jwksUri`` keys (as istiod does) and pushes them
inline: a real control plane, a real JWKS server on 127.0.0.1 and an SSE subscriber standing in for
a sidecar. Keys that change reach the snapshot on refresh; when the server fails later the error is
named and, as in istiod, the last good keys stay in force (no new snapshot)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshkit.control import jwt_demo
from meshkit.control.server import RunningControlPlane
from tests.control.conftest import SubscriberFactory

ISTIO_JWKS = json.loads((Path(__file__).parents[1] / "security" / "istio_jwt" / "jwks.json").read_text())


class JwksServer:
    def __init__(self) -> None:
        self.document: dict[str, Any] = ISTIO_JWKS
        self.status = 200
        self.hits = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response(self.document, status=self.status)

    async def start(self) -> JwksServer:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/jwks.json"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = await JwksServer().start()
    yield server
    await server.stop()


def request_authentication(uri: str) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example}}
spec:
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: "{uri}"
"""


async def until(check: Callable[[], Any], what: str, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.05)
    return result


async def test_fetched_keys_go_inline_and_follow_the_server(
    control_plane: RunningControlPlane, session: aiohttp.ClientSession, subscribe: SubscriberFactory,
    jwks_server: JwksServer,
) -> None:
    base = control_plane.url + "/api/v1"
    sidecar = await subscribe("httpbin-v1-0.default")
    await sidecar.next()
    async with session.post(f"{base}/apply", data=request_authentication(jwks_server.url),
                            headers={"Content-Type": "application/yaml"}) as response:
        assert response.status == 200, await response.text()

    async def rule() -> dict[str, Any] | None:
        snapshot = await sidecar.next()  # the subscriber ACKs every snapshot
        jwt = snapshot["inbound"].get("jwt")
        return jwt[0] if jwt and jwt[0]["jwks"] else None

    first = await until(rule, "the fetched keys in a pushed snapshot")
    assert json.loads(first["jwks"]) == ISTIO_JWKS and first["jwks_error"] is None
    # the key set changes (a rotation): a refresh pushes the new keys
    jwks_server.document = jwt_demo.public_jwks(control_plane.control_plane.directory)
    async with session.post(f"{base}/jwks/refresh", json={"uri": jwks_server.url}) as response:
        assert (await response.json())["ok"] is True
    rotated = await rule()
    assert rotated is not None and len(json.loads(rotated["jwks"])["keys"]) == 2
    # the server fails: the error is named; the last good keys keep verifying
    jwks_server.status = 503
    async with session.post(f"{base}/jwks/refresh", json={"uri": jwks_server.url}) as response:
        row = await response.json()
    assert row["ok"] is True and "HTTP 503" in row["error"]  # ok: good keys are still in force
    async with session.get(f"{base}/jwks") as response:
        [status] = (await response.json())["jwks"]
    assert status["resources"] == ["RequestAuthentication/default/jwt-example"]
    assert "HTTP 503" in status["error"]
    assert await sidecar.nothing_within(0.3)  # no new snapshot: the keys it has stay in force
    async with session.post(f"{base}/jwks/refresh", json={"uri": "http://127.0.0.1:1/other"}) as response:
        assert response.status == 404
