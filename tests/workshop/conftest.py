"""Fixtures for the workshop tests: a real instructor server on 127.0.0.1 (port 0) and HTTP helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from meshkit.workshop import client
from meshkit.workshop.server import RunningWorkshop, run_workshop

T = TypeVar("T")


@pytest.fixture
async def workshop(tmp_path: Path) -> AsyncIterator[RunningWorkshop]:
    running = await run_workshop("127.0.0.1", 0, tmp_path / "server", title="Test workshop")
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def instructor(running: RunningWorkshop) -> dict[str, str]:
    return bearer(running.store.workshop.instructor_token)


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """The attendee client is synchronous (as in a notebook): run it off the server's loop."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def join(running: RunningWorkshop, name: str, state_dir: Path) -> client.Attendee:
    return await in_thread(client.join, running.url, running.store.workshop.join_code, name,
                           state_dir=state_dir)


async def board(running: RunningWorkshop, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(f"{running.url}/api/instructor/state", headers=instructor(running)) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


def executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attendee")
