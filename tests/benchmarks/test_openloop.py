"""The open-loop generator of Istio's method keeps its rate and counts queueing (coordinated omission)."""

from __future__ import annotations

import pytest
from proxybench.openloop import Point, get_request, run_point

from tests.benchmarks.origin import Origin


async def test_keeps_the_rate_across_connections(origin: Origin) -> None:
    result = await run_point(Point(200, 4, 1.0), ("127.0.0.1", origin.port), get_request("/", "bench"))
    assert result.errors == 0 and result.non_2xx == 0 and result.unsent == 0
    assert 190 <= result.completed <= 201 and origin.requests == result.completed
    assert result.percentile(50) is not None


async def test_requests_due_during_a_stall_count_from_their_scheduled_time(origin: Origin) -> None:
    # One connection at 100 rps: a 0.3 s stall on the 10th answer delays the ~30 requests due meanwhile.
    # A closed-loop client would report one slow request; the open loop charges each its wait.
    origin.stall_at, origin.stall_s = 10, 0.3
    result = await run_point(Point(100, 1, 1.0), ("127.0.0.1", origin.port), get_request("/", "bench"))
    assert result.errors == 0
    slow = [latency for latency in result.latencies_us if latency > 100_000]
    assert len(slow) >= 10, sorted(result.latencies_us)[-15:]
    assert result.queued >= 10 and max(result.latencies_us) >= 250_000


async def test_a_refused_target_counts_errors_and_stops_in_time() -> None:
    result = await run_point(Point(50, 2, 0.5), ("127.0.0.1", 1), get_request("/", "bench"))
    assert result.completed == 0 and result.errors >= 20


async def test_bad_points_are_refused() -> None:
    with pytest.raises(ValueError, match="bad load point"):
        await run_point(Point(0, 1, 1.0), ("127.0.0.1", 1), b"")
