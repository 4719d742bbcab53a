"""The background load of ``push_latency.py --traffic`` runs in a child until told to stop, and reports it."""

from __future__ import annotations

import asyncio
import time

import pytest
from proxybench.background_load import BackgroundLoad, merge
from proxybench.openloop import OpenLoopResult, Point

from tests.benchmarks.origin import Origin


async def _until(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_runs_until_stopped_and_reports_every_request(origin: Origin) -> None:
    load = BackgroundLoad(Point(100, 2, 60), ("127.0.0.1", origin.port), "/", "bench")
    await load.start()
    try:
        await _until(lambda: origin.requests >= 50, 30)
    finally:
        summary = await load.stop()
    assert load.process is not None and load.process.returncode == 0  # the child is gone: no more sends
    assert summary["completed"] == origin.requests and summary["errors"] == 0 and summary["non_2xx"] == 0
    assert summary["rate"] == 100 and summary["connections"] == 2
    assert summary["seconds"] < 60  # it stopped when told, not at its bound
    assert summary["p50_us"] is not None


async def test_a_dead_target_is_reported_as_errors_not_hidden() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens on ``port`` now
    load = BackgroundLoad(Point(50, 1, 60), ("127.0.0.1", port), "/", "bench")
    await load.start()
    summary = await load.stop()  # the first slice always runs: the child reads its stdin's EOF after it
    assert summary["completed"] == 0 and summary["errors"] + summary["unsent"] > 0


def test_merge_sums_counts_and_pools_latencies() -> None:
    point = Point(10, 1, 1)
    first, second = OpenLoopResult(point, [1.0, 2.0], errors=1, elapsed_s=1.0), \
        OpenLoopResult(point, [3.0], non_2xx=2, queued=1, unsent=4, elapsed_s=0.5)
    merged = merge([first, second], point)
    assert merged.latencies_us == [1.0, 2.0, 3.0]
    assert (merged.errors, merged.non_2xx, merged.queued, merged.unsent) == (1, 2, 1, 4)
    assert merged.elapsed_s == 1.5 and merged.completed == 3


def test_the_bound_is_checked_before_a_child_starts() -> None:
    with pytest.raises(ValueError, match="seconds"):
        asyncio.run(BackgroundLoad(Point(10, 1, 10_000), ("127.0.0.1", 9), "/", "x").start())
