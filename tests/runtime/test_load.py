"""The load generator: pacing, user shares, bounded duration, background start/stop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from meshkit.runtime.load import LoadGenerator, parse_users
from tests.waiting import async_wait_until, wait_until


def test_parse_users() -> None:
    assert parse_users("jason:10%, kim:5") == {"jason": 0.1, "kim": 0.05}
    assert parse_users(None) == {}
    with pytest.raises(ValueError, match="NAME:PERCENT"):
        parse_users("jason")
    with pytest.raises(ValueError, match="more than 100%"):
        parse_users("a:60%,b:50%")


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Counter[str]]]:
    seen: Counter[str] = Counter()

    async def page(request: web.Request) -> web.Response:
        seen[request.cookies.get("user", "-")] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/productpage", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/productpage", seen
    await runner.cleanup()


async def test_paced_run_sends_about_rps_times_duration(server: tuple[str, Counter[str]]) -> None:
    url, seen = server
    gen = LoadGenerator(url, rps=50, duration=2.0, users={"jason": 0.5})
    began = time.monotonic()
    summary = await gen.run()
    assert time.monotonic() - began >= 1.9  # paced over the whole duration
    assert 80 <= summary["sent"] <= 101, summary
    assert summary["codes"] == {"200": summary["completed"]}
    # Half signed in as jason, give or take chance (binomial, n=100: 5 sigma is 25).
    assert 25 <= seen["jason"] <= 75, seen


def test_background_start_stop_counts_failures() -> None:
    with socket.socket() as sock:  # a port nothing listens on: every request fails to connect
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gen = LoadGenerator(f"http://127.0.0.1:{port}/", rps=20, duration=30.0).start()
    wait_until(lambda: gen.stats["completed"] >= 5, 20, "five failed requests")
    assert gen.running()
    summary = gen.stop()
    assert not gen.running()
    assert summary["sent"] >= 5
    assert summary["codes"].get("error", 0) == summary["completed"]
    assert summary["error_rate"] == 1.0


async def test_stop_from_another_task_ends_the_run(server: tuple[str, Counter[str]]) -> None:
    url, _ = server
    gen = LoadGenerator(url, rps=20, duration=60.0)
    task = asyncio.ensure_future(gen.run())
    await async_wait_until(lambda: gen.stats["completed"] >= 1, 20, "a first answer")
    gen._stop.set()
    summary = await asyncio.wait_for(task, 10.0)
    assert 1 <= summary["sent"] <= 30


def test_rejects_unbounded_or_silly_rates() -> None:
    with pytest.raises(ValueError, match="rps"):
        LoadGenerator("http://127.0.0.1:1/", rps=0)
    with pytest.raises(ValueError, match="duration"):
        LoadGenerator("http://127.0.0.1:1/", duration=10_000)
