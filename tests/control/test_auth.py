"""The control plane's API refuses whom it must: no token, a cross-site page, a foreign proxy id,
a body that is not JSON/YAML; and scrape targets come only from connected proxies."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.control.auth import ADMIN_TOKEN_FILE, ensure_admin_token
from meshkit.control.ca import TOKENS_FILE, BootstrapTokens, spiffe_identity
from meshkit.control.server import RunningControlPlane, run_control_plane
from tests.control.resources import BOOKINFO_REVIEWS, SERVICE, endpoint
from tests.control.sse import Subscriber

API = "/api/v1"
YAML = {"Content-Type": "application/yaml"}
POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: default}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[x-evil]
      values: ["1"]
"""


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    running = await run_control_plane(port=0, state_dir=tmp_path)  # with its CA and bootstrap tokens
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def anonymous() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def items(session: aiohttp.ClientSession, base: str) -> list[str]:
    status, listed = await call(session, "GET", f"{base}/config")
    assert status == 200, listed
    return [i["ref"] for i in listed["items"]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_admin_token_is_private_and_stable(plane: RunningControlPlane, tmp_path: Path) -> None:
    path = tmp_path / ADMIN_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(plane.admin_token) >= 40 and ensure_admin_token(tmp_path) == plane.admin_token


async def test_a_cross_site_text_plain_delete_removes_nothing(
        plane: RunningControlPlane, session: aiohttp.ClientSession, anonymous: aiohttp.ClientSession) -> None:
    """The attack of the review: a page POSTs text/plain to /api/v1/delete (no token, no preflight)."""
    base = plane.url + API
    status, _ = await call(session, "POST", f"{base}/apply", data=POLICY, headers=YAML)
    assert status == 200
    page = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    status, error = await call(anonymous, "POST", f"{base}/delete", data=POLICY, headers=page)
    assert status == 403 and error["messages"][0]["code"] == "MK0972"
    status, error = await call(anonymous, "POST", f"{base}/delete", data=POLICY,
                               headers={"Content-Type": "text/plain"})
    assert status == 401 and error["messages"][0]["code"] == "MK0970"
    status, error = await call(session, "POST", f"{base}/delete", data=POLICY,
                               headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json or application/yaml" in error["error"]
    status, error = await call(session, "POST", f"{base}/delete", data=POLICY,
                               headers={**YAML, "Origin": "http://evil.example"})
    assert status == 403  # even with the token: a state change from another site
    assert await items(session, base) == ["AuthorizationPolicy/default/deny-evil"]
    same_site = {**YAML, "Origin": plane.url}
    status, _ = await call(session, "POST", f"{base}/delete", data=POLICY, headers=same_site)
    assert status == 200 and await items(session, base) == []


async def test_no_token_no_access(plane: RunningControlPlane, session: aiohttp.ClientSession,
                                  anonymous: aiohttp.ClientSession) -> None:
    base = plane.url + API
    assert (await call(session, "POST", f"{base}/apply", data=BOOKINFO_REVIEWS, headers=YAML))[0] == 200
    refused = [("GET", "config", None), ("GET", "history", None), ("GET", "history/1", None),
               ("POST", "rollback", {"revision": 0}), ("GET", "registry", None),
               ("POST", "registry/endpoints", endpoint("ratings-v1-0")), ("GET", "proxy-status", None),
               ("DELETE", "config/vs/default/reviews", None), ("GET", "telemetry/targets", None),
               ("POST", "telemetry/scrape", None),
               ("GET", "xds/stream?id=reviews-v1-0.default", None), ("GET", "ca/root", None),
               ("POST", "xds/ack", {"id": "x-0.default", "version": "v", "status": "ACK"})]
    for token in (None, "wrong", plane.admin_token + "x"):
        headers = bearer(token) if token else {}
        for method, path, body in refused:
            status, error = await call(anonymous, method, f"{base}/{path}", json=body, headers=headers)
            assert status == 401, (method, path, token, error)
            assert "Bearer" in error["error"]
    assert len(await items(session, base)) == 2
    status, registry = await call(session, "GET", f"{base}/registry")
    assert registry["endpoints"] == []  # no "ratings" without a sidecar slipped in
    status, health = await call(anonymous, "GET", f"{base}/healthz")
    assert (status, health) == (200, {"status": "ok"})  # liveness only, no state


async def test_no_cors_headers_and_no_preflight(plane: RunningControlPlane,
                                                anonymous: aiohttp.ClientSession) -> None:
    base = plane.url + API
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    async with anonymous.options(f"{base}/apply", headers=preflight) as response:
        assert response.status >= 400
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    async with anonymous.get(f"{base}/healthz", headers={"Origin": "http://evil.example"}) as response:
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


async def test_a_sidecar_follows_only_its_own_snapshot(plane: RunningControlPlane, tmp_path: Path,
                                                       session: aiohttp.ClientSession,
                                                       anonymous: aiohttp.ClientSession) -> None:
    base = plane.url + API
    for path, doc in (("registry/services", SERVICE),
                      ("registry/endpoints", endpoint("reviews-v1-0")),
                      ("registry/endpoints",
                       {**endpoint("ratings-v1-0"), "service_account": "bookinfo-ratings"})):
        assert (await call(session, "POST", f"{base}/{path}", json=doc))[0] == 200
    tokens = BootstrapTokens.open(tmp_path / "ca" / TOKENS_FILE)  # as the runtime issues them
    reviews = tokens.issue_token(spiffe_identity("default", "bookinfo-reviews"))
    async with aiohttp.ClientSession(headers=bearer(reviews)) as sidecar:
        own = await Subscriber(sidecar, plane.url, "reviews-v1-0.default").start()
        try:
            snapshot = await own.next()
            assert snapshot["node"]["instance"] == "reviews-v1-0"
        finally:
            await own.close()
        status, error = await call(sidecar, "GET", f"{base}/xds/stream",
                                   params={"id": "ratings-v1-0.default"})
        assert status == 403 and "ratings-v1-0.default" in error["error"]
        status, _ = await call(sidecar, "GET", f"{base}/xds/stream", params={"id": "reviews-v1-0.other"})
        assert status == 403  # another namespace
        status, _ = await call(sidecar, "POST", f"{base}/xds/ack",
                               json={"id": "ratings-v1-0.default", "version": "x", "status": "ACK"})
        assert status == 403
        for method, path, body in (("GET", "config", None), ("POST", "registry/endpoints", endpoint("z-0")),
                                   ("POST", "rollback", {"revision": 0}), ("GET", "proxy-status", None)):
            status, error = await call(sidecar, method, f"{base}/{path}", json=body)
            assert status == 403 and error["messages"][0]["code"] == "MK0971", (method, path)
        status, root = await call(sidecar, "GET", f"{base}/ca/root")
        assert status == 200 and "BEGIN CERTIFICATE" in root["root"]
    tokens.revoke(spiffe_identity("default", "bookinfo-reviews"))
    status, _ = await call(anonymous, "GET", f"{base}/xds/stream", params={"id": "reviews-v1-0.default"},
                           headers=bearer(reviews))
    assert status == 401  # a revoked token stops working


async def test_scrape_targets_come_from_connected_proxies_only(plane: RunningControlPlane,
                                                               session: aiohttp.ClientSession) -> None:
    base = plane.url + API
    status, _ = await call(session, "PUT", f"{base}/telemetry/targets/x",
                           json={"url": "http://169.254.169.254/latest/meta-data"})
    assert status == 405
    assert plane.control_plane.telemetry.targets == {}
    async with session.get(f"{base}/xds/stream", params={"id": "reviews-v1-0.default", "admin_port": "15999"},
                           timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as stream:
        assert stream.status == 200
        assert plane.control_plane.telemetry.targets == {
            "reviews-v1-0.default": "http://127.0.0.1:15999/stats/prometheus"}
    status, error = await call(session, "GET", f"{base}/xds/stream",
                               params={"id": "reviews-v1-0.default", "admin_port": "http://x"})
    assert status == 400 and "admin_port" in error["error"]
