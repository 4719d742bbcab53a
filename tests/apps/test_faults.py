"""The /admin fault knobs every app offers (outlier-detection lessons), on a real ratings process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from tests.apps.processes import AppProcesses, RunningApp

REQUESTS = 200
BATCH = 20


@pytest.fixture(scope="module")
def ratings(processes: AppProcesses) -> RunningApp:
    return processes.launch("ratings", "--seed", "11")


@pytest.fixture(autouse=True)
def reset(ratings: RunningApp) -> Iterator[None]:
    ratings.admin("reset")
    yield
    ratings.admin("reset")


async def _statuses(url: str, count: int) -> list[int]:
    """``count`` GETs, at most ``BATCH`` in flight at once."""
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.get(url) as answer:
                await answer.read()
                return answer.status

        for start in range(0, count, BATCH):
            statuses += await asyncio.gather(*(one() for _ in range(min(BATCH, count - start))))
    return statuses


async def _admin(url: str, method: str = "POST") -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as answer:
        return answer.status, await answer.json()


async def test_fail_rate_is_statistically_honoured_and_restorable(ratings: RunningApp) -> None:
    status, state = await _admin(f"{ratings.url}/admin/fail?rate=0.5")
    assert status == 200 and state["fail"] == {"rate": 0.5, "code": 503}
    statuses = await _statuses(f"{ratings.url}/ratings/0", REQUESTS)
    failed = statuses.count(503)
    assert set(statuses) == {200, 503}
    # Binomial(200, 0.5): 60..140 is more than 5.6 standard deviations wide on each side.
    assert 60 <= failed <= 140, failed
    _, state = await _admin(f"{ratings.url}/admin/state", "GET")
    assert state["requests"] == {"served": REQUESTS, "failed_injected": failed}
    assert state["podname"] == "ratings-v1-0"

    await _admin(f"{ratings.url}/admin/fail?rate=0")
    assert set(await _statuses(f"{ratings.url}/ratings/0", 40)) == {200}


async def test_fail_rate_one_with_a_code_fails_everything_but_admin_and_health(ratings: RunningApp) -> None:
    status, _ = await _admin(f"{ratings.url}/admin/fail?rate=1&code=500", "GET")  # GET works too
    assert status == 200
    assert set(await _statuses(f"{ratings.url}/ratings/0", 30)) == {500}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{ratings.url}/ratings/0") as answer:
            body = await answer.json()
            assert body["error"].startswith("injected failure") and body["podname"] == "ratings-v1-0"
        async with session.get(f"{ratings.url}/healthz") as answer:
            assert answer.status == 200
    _, state = await _admin(f"{ratings.url}/admin/state", "GET")
    assert state["fail"] == {"rate": 1.0, "code": 500}


async def test_delay_knob_delays_requests(ratings: RunningApp) -> None:
    _, state = await _admin(f"{ratings.url}/admin/delay?seconds=0.5")
    assert state["delay_seconds"] == 0.5
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _statuses(f"{ratings.url}/ratings/0", 1) == [200]
    assert loop.time() - started >= 0.45
    _, state = await _admin(f"{ratings.url}/admin/reset")
    assert state["delay_seconds"] == 0.0 and state["requests"] == {"served": 0, "failed_injected": 0}


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("fail?rate=abc", "'rate'"),
        ("fail?rate=1.5", "'rate'"),
        ("fail", "'rate' is required"),
        ("fail?rate=0.5&code=200", "'code'"),
        ("fail?rate=0.5&code=5xx", "'code'"),
        ("delay?seconds=-1", "'seconds'"),
        ("delay?seconds=nan", "'seconds'"),
    ],
)
async def test_bad_knob_values_are_rejected_with_the_field_named(
    ratings: RunningApp, path: str, field: str
) -> None:
    status, body = await _admin(f"{ratings.url}/admin/{path}")
    assert status == 400
    knob = path.partition("?")[0]
    assert field in str(body["error"]) and f"/admin/{knob}" in str(body["error"])
    _, state = await _admin(f"{ratings.url}/admin/state", "GET")
    assert state["fail"] == {"rate": 0.0, "code": 503} and state["delay_seconds"] == 0.0
