"""The httpbin-like echo service, as a real process."""

from __future__ import annotations

import time
import uuid

import aiohttp
import pytest

from meshkit.apps.identity import PODNAME_HEADER, VERSION_HEADER
from tests.apps.processes import AppProcesses, RunningApp


@pytest.fixture(scope="module")
def httpbin(processes: AppProcesses) -> RunningApp:
    return processes.launch("httpbin", "--version", "v2", "--instance", "httpbin-v2-7", "--seed", "5")


async def _call(method: str, url: str, **kwargs: object) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as answer:  # type: ignore[arg-type]
        return answer.status, answer.headers, await answer.read()


async def _json(method: str, url: str, **kwargs: object) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as answer:  # type: ignore[arg-type]
        return answer.status, await answer.json()


async def test_headers_echo_what_arrived(httpbin: RunningApp) -> None:
    status, body = await _json("GET", f"{httpbin.url}/headers", headers={"X-Forwarded-Client-Cert": "By=x"})
    assert status == 200
    headers = body["headers"]
    assert isinstance(headers, dict) and headers["X-Forwarded-Client-Cert"] == "By=x"
    assert body["podname"] == "httpbin-v2-7" and body["version"] == "v2"


async def test_get_and_anything_echo_the_request(httpbin: RunningApp) -> None:
    status, body = await _json("GET", f"{httpbin.url}/get?a=1&b=two")
    assert status == 200 and body["args"] == {"a": "1", "b": "two"}
    assert str(body["url"]).endswith("/get?a=1&b=two") and body["origin"] == "127.0.0.1"
    status, body = await _json("PATCH", f"{httpbin.url}/anything/some/path?x=y", json={"k": [1, 2]})
    assert status == 200
    assert body["method"] == "PATCH" and body["path"] == "/anything/some/path"
    assert body["json"] == {"k": [1, 2]} and body["args"] == {"x": "y"}
    status, body = await _json("POST", f"{httpbin.url}/post", data={"f": "v"})
    assert status == 200 and body["form"] == {"f": "v"} and body["data"] == "f=v"


async def test_status_codes(httpbin: RunningApp) -> None:
    status, headers, raw = await _call("GET", f"{httpbin.url}/status/418")
    assert status == 418 and b'"status": 418' in raw
    assert headers[PODNAME_HEADER] == "httpbin-v2-7" and headers[VERSION_HEADER] == "v2"
    status, _, raw = await _call("GET", f"{httpbin.url}/status/204")
    assert status == 204 and raw == b""
    seen = {(await _call("GET", f"{httpbin.url}/status/200:0.5,503:0.5"))[0] for _ in range(40)}
    assert seen == {200, 503}  # P(one code missing in 40 fair draws) ~ 2e-12
    for bad in ("abc", "99", "200,600", "200:0"):
        status, body = await _json("GET", f"{httpbin.url}/status/{bad}")
        assert status == 400 and "'codes'" in str(body["error"]), bad


async def test_delay(httpbin: RunningApp) -> None:
    started = time.monotonic()
    status, body = await _json("GET", f"{httpbin.url}/delay/0.6")
    assert status == 200 and body["delay"] == 0.6
    assert time.monotonic() - started >= 0.55
    status, body = await _json("GET", f"{httpbin.url}/delay/-1")
    assert status == 400 and "'seconds'" in str(body["error"])


async def test_small_endpoints(httpbin: RunningApp) -> None:
    _, body = await _json("GET", f"{httpbin.url}/uuid")
    assert uuid.UUID(str(body["uuid"]))
    _, body = await _json("GET", f"{httpbin.url}/ip", headers={"X-Forwarded-For": "10.1.2.3, 127.0.0.1"})
    assert body["origin"] == "10.1.2.3"
    _, body = await _json("GET", f"{httpbin.url}/user-agent", headers={"User-Agent": "lesson/1"})
    assert body["user-agent"] == "lesson/1"
    status, body = await _json("GET", f"{httpbin.url}/healthz")
    assert status == 200 and body["status"] == "httpbin is healthy"
    status, body = await _json("GET", f"{httpbin.url}/nowhere")
    assert status == 404 and body["error"] == "no route for GET /nowhere"
    status, body = await _json("DELETE", f"{httpbin.url}/get")
    assert status == 405 and "DELETE is not allowed on /get" in str(body["error"])


async def test_bytes(httpbin: RunningApp) -> None:
    status, headers, raw = await _call("GET", f"{httpbin.url}/bytes/1024?seed=7")
    assert status == 200 and len(raw) == 1024 and headers["Content-Type"] == "application/octet-stream"
    assert (await _call("GET", f"{httpbin.url}/bytes/1024?seed=7"))[2] == raw  # a seed repeats
    assert (await _call("GET", f"{httpbin.url}/bytes/1024?seed=8"))[2] != raw
    assert len((await _call("GET", f"{httpbin.url}/bytes/999999"))[2]) == 100 * 1024  # httpbin's cap
    for bad in ("abc", "-1", "12?seed=x"):
        status, _, raw = await _call("GET", f"{httpbin.url}/bytes/{bad}")
        assert status == 400 and b"'n'" in raw, bad
