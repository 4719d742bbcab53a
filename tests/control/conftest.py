"""Fixtures: a real control plane on a free port (in-process), an HTTP session, SSE subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.control.auth import ensure_admin_token
from meshkit.control.server import RunningControlPlane, run_control_plane
from tests.control.sse import Subscriber


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    running = await run_control_plane(port=0, state_dir=tmp_path, with_ca=False)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    """An admin session for the control planes whose state dir is ``tmp_path``: the admin token
    is made there first, as `meshkit up` does, and the control plane then uses it."""
    headers = {"Authorization": f"Bearer {ensure_admin_token(tmp_path)}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=headers) as client:
        yield client


SubscriberFactory = Callable[..., Coroutine[Any, Any, Subscriber]]


@pytest.fixture
async def subscribe(control_plane: RunningControlPlane,
                    session: aiohttp.ClientSession) -> AsyncIterator[SubscriberFactory]:
    started: list[Subscriber] = []

    async def factory(proxy_id: str, mode: str = "ack") -> Subscriber:
        subscriber = await Subscriber(session, control_plane.url, proxy_id, mode).start()
        started.append(subscriber)
        return subscriber

    yield factory
    for subscriber in started:
        await subscriber.close()
