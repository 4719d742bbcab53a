"""Hypothesis throws bodies, content types, sizes, methods and auth headers at the real control
plane: every answer is a JSON 2xx/4xx within a deadline, never a 5xx, a hang or a dropped
connection, and nothing is applied without the admin token."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit.control.server import RunningControlPlane, run_control_plane
from tests.control.resources import BOOKINFO_REVIEWS

ROUTES = ["apply", "delete", "analyze", "rollback", "config", "config/vs/default/reviews", "history",
          "history/1", "registry", "registry/services", "registry/endpoints",
          "registry/endpoints/default/x-0/health", "proxy-status", "xds/ack", "ca/sign", "ca/root",
          "telemetry", "telemetry/targets", "telemetry/targets/x", "telemetry/scrape", "healthz", "nope"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
TYPES = [None, "application/json", "application/yaml", "text/plain", "application/x-www-form-urlencoded",
         "multipart/form-data; boundary=x", "application/json; charset=utf-8", "text/yaml", "*/*", ""]
BODIES = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=512).map(str.encode),
    st.sampled_from([BOOKINFO_REVIEWS.encode(), b"{}", b"[]", b"null", b"[" * 5000, b"a: &a [*a]",
                     b'{"revision": -1}', b'{"revision": 1e309}', b'{"id": "x", "version": "", "status": 1}',
                     b"\xff\xfe", b"---\n" * 3000, b'{"csr": "x", "token": "y"}', b"#" * 70000]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                             max_size=4),
                 max_leaves=30).map(lambda doc: json.dumps(doc).encode()),
)
WAIT_S = 20.0


class Plane:
    """A control plane (with its CA) on its own event loop in a thread, so hypothesis runs sync."""

    def __init__(self, state_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningControlPlane = self.run(run_control_plane(port=0, state_dir=state_dir))

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT_S)

    def close(self) -> None:
        self.run(self.running.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        self.loop.close()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    running = Plane(tmp_path_factory.mktemp("fuzz"))
    try:
        yield running
    finally:
        running.close()


async def _send(url: str, method: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
            method, url, data=body or None, headers=headers, skip_auto_headers={"Content-Type"}) as response:
        streaming = response.status == 200 and "stream" in url
        raw = b"" if streaming else await response.content.read(256 * 1024)
        return response.status, response.content_type, raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=st.fixed_dictionaries({
    "route": st.sampled_from(ROUTES), "method": st.sampled_from(METHODS), "body": BODIES,
    "content_type": st.sampled_from(TYPES),
    "auth": st.sampled_from(["none", "admin", "garbage", "basic", "admin-lower", "empty"]),
    "origin": st.sampled_from([None, "http://evil.example", "null"])}))
def test_no_input_gets_a_5xx_or_a_hang(plane: Plane, case: dict[str, Any]) -> None:
    route, method, body, content_type, auth, origin = (
        case["route"], case["method"], case["body"], case["content_type"], case["auth"], case["origin"])
    token = plane.running.admin_token
    headers = {
        "none": {}, "admin": {"Authorization": f"Bearer {token}"},
        "garbage": {"Authorization": "Bearer ../x%00"}, "basic": {"Authorization": "Basic YWRtaW46YWRtaW4="},
        "admin-lower": {"authorization": f"bearer {token}"}, "empty": {"Authorization": "Bearer "},
    }[auth]
    if content_type is not None:
        headers["Content-Type"] = content_type
    if origin is not None:
        headers["Origin"] = origin
    before = plane.running.control_plane.store.revision
    status, kind, raw = plane.run(_send(f"{plane.running.url}/api/v1/{route}", method, body, headers))
    assert status < 500, (status, raw[:300])
    if status >= 400:
        assert kind == "application/json", (status, kind, raw[:200])
        assert "error" in json.loads(raw)
    if auth not in ("admin", "admin-lower") or origin is not None:
        assert plane.running.control_plane.store.revision == before  # nothing changed without the admin
