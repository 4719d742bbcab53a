"""The control plane's event loop (pushes, the CA, the API) keeps running while a large config is
applied and pushed: measured inside the process with a ticker on the loop itself, with a bound
generous enough for a loaded 2-core machine (benchmarks/config_bounds.py holds the real figures).
And what the garbage-collector freeze relies on: a config and its snapshots hold no cycles."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from meshkit.config.compile import compile_snapshot
from meshkit.control.api import COMPONENTS
from meshkit.control.database import open_database
from meshkit.control.preparation import GC_PAUSED, prepare_apply_here
from meshkit.control.registry import ServiceRegistry
from meshkit.control.rendering import SnapshotTemplate
from meshkit.control.server import RunningControlPlane, run_control_plane
from meshkit.control.store import ConfigStore
from tests.control.resources import DESTINATION_RULE
from tests.control.test_bounds import big_virtual_service
from tests.control.test_preparation import until_ready

API = "/api/v1"
ROUTES = 8000  # about 1 MB of JSON
STALL_BOUND_S = 0.25  # before the fixes single stalls were 250-500 ms (GC passes, answer, dealloc)
DESTINATION_RULE_DOC = yaml.safe_load(DESTINATION_RULE)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    running = await run_control_plane(port=0, state_dir=tmp_path, with_ca=False)
    try:
        yield running
    finally:
        await running.close()


async def _ticker(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def _next_snapshot(stream: aiohttp.ClientResponse, buffer: bytearray) -> bytes:
    while b"\n\n" not in buffer:
        chunk = await asyncio.wait_for(stream.content.readany(), 60)
        assert chunk, "the stream ended"
        buffer += chunk
    end = buffer.index(b"\n\n")
    event = bytes(buffer[:end])
    del buffer[:end + 2]
    return event


async def test_the_loop_keeps_running_while_1_mb_configs_are_applied_and_pushed(
        plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    base = plane.url + API
    stream = await session.get(f"{base}/xds/stream", params={"id": "reviews-v1-0.default"},
                               timeout=aiohttp.ClientTimeout(total=None))
    buffer = bytearray()
    await _next_snapshot(stream, buffer)  # the first snapshot
    gaps: list[float] = []
    stop = asyncio.Event()
    preparation = plane.runner.app[COMPONENTS].preparation
    for subset in ("v1", "v2", "v1"):  # created (on a thread; it starts the worker process), then
        # every route changed and changed back (in the worker process): those two are measured
        body = json.dumps({"apiVersion": "v1", "kind": "List",
                           "items": [big_virtual_service(ROUTES, subset)]}).encode()
        assert len(body) > 900_000
        if subset == "v1" and not gaps:
            async with session.post(f"{base}/apply", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                assert response.status == 200, await response.text()
            await _next_snapshot(stream, buffer)
            await until_ready(preparation)
            gaps.append(0.0)
            continue
        ticker = asyncio.ensure_future(_ticker(gaps, stop))
        async with session.post(f"{base}/apply", data=body,
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()  # one warning per route (host not in the registry): built off-loop
            assert answer["changed"] and len(answer["warnings"]) >= ROUTES
        event = await _next_snapshot(stream, buffer)
        assert subset.encode() in event and len(event) > 1_000_000
        stop.set()
        await ticker
        stop.clear()
    stream.close()
    print(f"longest loop stall: {max(gaps) * 1000:.0f} ms")
    assert max(gaps) < STALL_BOUND_S, f"the loop stalled {max(gaps) * 1000:.0f} ms"


def _prepare_and_compile(store: ConfigStore, registry: ServiceRegistry, subset: str) -> None:
    node = dataclasses.replace(registry.node_for("reviews-v1-0.default", "sidecar"), instance="")
    body = json.dumps([DESTINATION_RULE_DOC, big_virtual_service(2000, subset)]).encode()
    _, change = prepare_apply_here(store, body, True, registry.view(), None)
    store.commit(change)
    del change
    resources, view = store.resources(), registry.view()
    SnapshotTemplate(compile_snapshot(resources, view, node, revision=store.revision)).render(node)


def test_a_large_prepared_config_is_frozen_not_left_to_the_collector(tmp_path: Path) -> None:
    connection = open_database(tmp_path)
    store, registry = ConfigStore(connection), ServiceRegistry(connection)
    frozen = GC_PAUSED.frozen
    try:
        _prepare_and_compile(store, registry, "v1")
        assert GC_PAUSED.frozen > frozen  # the 2000-route config (about 70,000 objects) was frozen
    finally:
        connection.close()
        gc.unfreeze()


def test_a_large_config_and_its_snapshots_hold_no_cycles(tmp_path: Path) -> None:
    """Frozen objects (gc.freeze) are freed by reference counting alone: a config, replaced configs,
    and compiled snapshots must never need the collector."""
    connection = open_database(tmp_path)
    store, registry = ConfigStore(connection), ServiceRegistry(connection)
    gc.collect()
    gc.disable()
    try:
        for subset in ("v1", "v2", "v1"):
            _prepare_and_compile(store, registry, subset)
        connection.close()
        del store, registry
        assert gc.collect() == 0  # no cycles: everything was freed by reference counting
    finally:
        gc.enable()
