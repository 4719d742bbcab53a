"""30 open console tabs against a real control plane: every answer correct, nothing left open.

The scenario is `benchmarks/console_load.py` run small (each tab draws the graph, follows the event
stream and redraws once when it says the telemetry changed): real control plane and sidecar
processes, the API the mesh uses (proxy-status, apply -> every proxy ACKed) measured without and then
with the 30 tabs following. Times are the benchmark's business (benchmarks/README.md); this test
checks that every answer in both phases is right, every tab's stream opened and drove its redraw,
and the control plane holds no more connections afterwards than before (bounded: fixed tabs x
redraws, every request and stream with a timeout).
"""

from __future__ import annotations

import pytest
from console_load import PAGE_FILES, REFRESH_CALLS, SIDECARS, run

pytestmark = pytest.mark.timeout(240)

CLIENTS = 30
REFRESHES = 2


async def test_thirty_console_tabs_leave_the_api_answers_right_and_release_their_connections() -> None:
    result = await run(clients=CLIENTS, refreshes=REFRESHES, samples=10, applies=3)
    assert result["served"] == 30 * len(SIDECARS)  # the telemetry had traffic to answer about
    for phase in ("alone", "console"):
        measured = result[phase]
        assert measured["problems"] == [], measured["problems"]
        assert len(measured["proxy_status_s"]) == 10 and len(measured["apply_to_synced_s"]) == 3
    tabs = result["tabs"]
    assert len(tabs) == CLIENTS
    for tab in tabs:
        assert tab.errors == [], tab.errors
        assert len(tab.latencies) == REFRESHES
        assert tab.statuses == {200: len(PAGE_FILES) + 1 + REFRESHES * len(REFRESH_CALLS)}, tab.statuses
        assert tab.frames.get("hello") == 1 and tab.frames.get("telemetry", 0) >= 1, tab.frames
        assert tab.page_bytes == tabs[0].page_bytes > 10_000
    # every tab closed its connection: the control plane is back to the descriptors it had
    assert result["fds_after"] <= result["fds_before"] + 2, (result["fds_before"], result["fds_after"])
