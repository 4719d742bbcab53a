"""The web console over plain HTTP: ``/ui`` and its files are served without a token (they hold no
data), every API call the page's scripts make needs the admin token, and the page keeps the API's
cross-site rule (a state change from another origin is refused even with the token)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from meshkit.control.console import FILES, PLOTLY
from meshkit.control.server import RunningControlPlane, run_control_plane

STATIC = Path(__file__).resolve().parents[2] / "meshkit" / "control" / "console" / "static"
# mk.api("path...") in the page's scripts: literal or template-literal first argument
CALL = re.compile(r"""mk\.api\(\s*["`]([^"`$?]+)""")
FETCH = re.compile(r"""fetch\(\s*(?:mk\.base\s*\+\s*)?[`"]([^`"$]+)""")


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    running = await run_control_plane(port=0, state_dir=tmp_path, with_ca=False)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def page_calls() -> set[str]:
    """Every API path the console's scripts call (the part before any query or variable)."""
    found: set[str] = set()
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        found |= {m.rstrip("/") for m in CALL.findall(text)}
        found |= {m.removeprefix("/api/v1/").rstrip("/") for m in FETCH.findall(text)
                  if m.startswith("/api/v1/")}
    return found - {""}


async def test_ui_and_its_files_are_served_without_a_token(plane: RunningControlPlane,
                                                           http: aiohttp.ClientSession) -> None:
    async with http.get(plane.url + "/ui", allow_redirects=False) as response:
        assert response.status == 200
        assert '<base href="ui/">' in await response.text()  # relative URLs, also behind a proxy prefix
    async with http.get(plane.url + "/ui/") as response:
        assert "<base" not in await response.text()
    for path in ("/ui", "/ui/", *(f"/ui/{name}" for name in FILES), f"/ui/{PLOTLY}"):
        async with http.get(plane.url + path) as response:
            body = await response.read()
            assert response.status == 200, path
            assert body, path
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["Referrer-Policy"] == "no-referrer"
    async with http.get(plane.url + "/ui") as response:
        page = await response.text()
    assert response.content_type == "text/html"
    for name in FILES:
        if name.endswith(".js"):
            assert f'src="{name}"' in page  # relative: the page works behind a proxy prefix
    assert "<script>" not in page  # no inline script: the CSP forbids it


async def test_plotly_comes_from_the_installed_plotly_package(plane: RunningControlPlane,
                                                              http: aiohttp.ClientSession) -> None:
    import importlib.resources  # noqa: PLC0415

    shipped = (importlib.resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    async with http.get(f"{plane.url}/ui/{PLOTLY}") as response:
        assert await response.read() == shipped


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/..%2fcontrol.db", "/ui/%2e%2e/admin-token",
                                  "/ui/vendor/../../admin-token", "/ui/static/index.html"])
async def test_only_the_console_files_are_served(plane: RunningControlPlane, http: aiohttp.ClientSession,
                                                 path: str) -> None:
    async with http.get(plane.url + path) as response:
        body = await response.text()
    # 404 from the console, or 401 when the client resolved the dot segments to a path outside /ui
    assert response.status in (401, 404), (path, body[:200])
    assert plane.admin_token not in body
    assert "SQLite" not in body


def test_the_page_calls_the_apis_this_test_checks() -> None:
    calls = page_calls()
    expected = {"proxy-status", "console/certificates", "traces", "telemetry", "registry", "config",
                "telemetry/series", "analyze", "history", "rollback", "apply"}
    assert expected <= calls, sorted(calls)


async def test_every_api_call_of_the_page_needs_the_token(plane: RunningControlPlane,
                                                          http: aiohttp.ClientSession) -> None:
    calls = page_calls()
    assert calls
    for path in sorted(calls):
        for method in ("GET", "POST"):
            async with http.request(method, f"{plane.url}/api/v1/{path}") as response:
                if response.status == 405:
                    continue
                assert response.status == 401, (method, path, response.status)
    async with http.get(f"{plane.url}/api/v1/console/certificates", headers=plane.admin_headers) as response:
        assert response.status == 200
        assert await response.json() == {"certificates": []}  # no sidecar connected


async def test_the_page_may_change_config_same_origin_but_no_other_site_may(
        plane: RunningControlPlane, http: aiohttp.ClientSession) -> None:
    yaml_body = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                 "metadata: {name: r, namespace: default}\nspec:\n  hosts: [reviews]\n"
                 "  http:\n  - route:\n    - destination: {host: reviews}\n")
    headers = {**plane.admin_headers, "Content-Type": "application/yaml"}
    same = {**headers, "Origin": plane.url, "Sec-Fetch-Site": "same-origin"}
    async with http.post(f"{plane.url}/api/v1/apply", data=yaml_body, headers=same) as response:
        assert response.status == 200, await response.text()
    other = {**headers, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    async with http.post(f"{plane.url}/api/v1/rollback", json={"revision": 0}, headers=other) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_meshkit_dashboard_prints_the_console_url_with_the_token_in_the_fragment(
        plane: RunningControlPlane, tmp_path: Path) -> None:
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    from typer.testing import CliRunner  # noqa: PLC0415

    from meshkit.cli import app  # noqa: PLC0415

    env = {"MESHKIT_CONTROL_TOKEN": plane.admin_token, "MESHKIT_HOME": str(plane.control_plane.directory),
           "JUPYTERHUB_SERVICE_PREFIX": None, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    argv = ["dashboard", "--no-browser", "--control", plane.url]
    result = await asyncio.to_thread(CliRunner().invoke, app, argv, env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{plane.url}/ui/#token={plane.admin_token}"
    hub = await asyncio.to_thread(CliRunner().invoke, app, argv,
                                  env={**env, "JUPYTERHUB_SERVICE_PREFIX": "/user/ada/"})
    assert hub.output.splitlines()[1].endswith(
        f"/user/ada/proxy/{plane.port}/ui/#token={plane.admin_token}"), hub.output
    # in a Jupyter terminal (or a kernel): the Jupyter server above this process, from its info file
    (tmp_path / f"jpserver-{os.getpid()}.json").write_text(json.dumps(
        {"base_url": "/jh/", "url": "http://127.0.0.1:8899/jh/", "pid": os.getpid()}))
    terminal = await asyncio.to_thread(CliRunner().invoke, app, argv, env=env)
    assert terminal.output.splitlines()[1] == (f"through Jupyter: http://127.0.0.1:8899/jh/proxy/{plane.port}"
                                               f"/ui/#token={plane.admin_token}"), terminal.output
    wrong = await asyncio.to_thread(CliRunner().invoke, app, argv,
                                    env={**env, "MESHKIT_CONTROL_TOKEN": "not-the-token"})
    assert wrong.exit_code != 0
    assert "/ui#token" not in wrong.output


async def test_plotly_is_sent_gzipped_to_a_browser_that_accepts_it(plane: RunningControlPlane,
                                                                    http: aiohttp.ClientSession) -> None:
    async with http.get(f"{plane.url}/ui/{PLOTLY}", headers={"Accept-Encoding": "identity"}) as response:
        plain = await response.read()
        assert "Content-Encoding" not in response.headers
    async with http.get(f"{plane.url}/ui/{PLOTLY}", headers={"Accept-Encoding": "gzip"},
                        auto_decompress=False) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        packed = await response.read()
    import gzip  # noqa: PLC0415

    assert gzip.decompress(packed) == plain
    assert len(packed) < len(plain) / 2
