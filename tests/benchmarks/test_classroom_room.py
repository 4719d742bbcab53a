"""A smaller simulated room (benchmarks/classroom_room.py, 30 attendees for 10 s): a real
``meshkit workshop serve`` process, real HTTP clients, one attendee flooding, a live dashboard and a
crash half way. Proves the properties; the figures (delay, bytes, CPU) are the benchmark's."""

from __future__ import annotations

import pytest
from classroom_room import simulate

pytestmark = pytest.mark.timeout(240)


def test_a_room_of_30_with_a_flooder_and_a_crash_loses_nothing_and_the_dashboard_stays_live() -> None:
    room = simulate(30, 10.0, interval=1.0)  # the restart takes ~2 s of it
    # nothing acknowledged is lost across the SIGKILL, and what was queued during it arrived
    assert room.acknowledged > 30 and room.lost_acknowledged == 0 and room.never_arrived == 0
    # the flooder is held back and counted on the board (counts since the restart)
    assert room.flood_limited > room.flood_accepted > 0
    assert room.throttled_on_board > 0
    # the dashboard followed the room through the crash: every broadcast it was sent, it showed
    assert room.markers_sent >= 2 and len(room.marker_delay) == room.markers_sent
    assert room.reconnects >= 1
    # live updates are patches, smaller than the whole board
    assert room.frames_board and room.frames_patch
    assert max(room.frames_patch) < room.board_bytes  # the whole board at the end
    assert room.rows_on_board == 31 and room.board_bytes > 0 and room.csv_bytes > 0
    assert room.server_cpu_seconds > 0 and room.server_peak_rss_kb > 0
