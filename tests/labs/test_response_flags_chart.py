"""The response-flags chart against a real mesh: an injected abort shows up as FI in the figure's data."""

from __future__ import annotations

import time

from meshkit.lab import checks, rules
from meshkit.lab.charts import FLAG_COLORS, flag_counts, response_flags
from meshkit.lab.mesh import Mesh
from tests.labs.conftest import counted, settle


def _bars(chart: object) -> dict[str, dict[str, float]]:
    """flag -> {destination: requests} as the figure holds them."""
    figure = chart.figure  # type: ignore[attr-defined]
    return {t.name: dict(zip(t.x, t.y, strict=True)) for t in figure.data}


def test_flag_counts_keeps_unflagged_requests_and_combined_flags_apart() -> None:
    edges = [
        {"destination_service": "details", "destination_version": "v1", "requests": 10,
         "flags": {"FI": 4}},
        {"destination_service": "reviews", "destination_version": "v2", "requests": 5,
         "flags": {"DI,FI": 2, "DI": 1}},
        {"destination_service": "reviews", "destination_version": "v3", "requests": 3, "flags": {}},
    ]
    assert flag_counts(edges) == {"details": {"FI": 4.0, "-": 6.0},
                                  "reviews": {"DI,FI": 2.0, "DI": 1.0, "-": 5.0}}
    assert flag_counts(edges, "reviews") == {"reviews v2": {"DI,FI": 2.0, "DI": 1.0, "-": 2.0},
                                             "reviews v3": {"-": 3.0}}


def test_an_injected_abort_appears_as_fi_on_its_destination(mesh: Mesh) -> None:
    mesh.apply(rules.fault("details", abort=503, percent=100))
    settle(mesh)  # nothing of an earlier test is still to be scraped
    started = time.time()
    mesh.load(rps=15, duration=2).wait(15)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the scrape after the load's last answer
        edges = mesh.telemetry(checks.window_since(started)).get("edges", [])
        if flag_counts(edges).get("details", {}).get("FI", 0) >= 10:
            break
        time.sleep(0.5)
    import plotly.graph_objects  # noqa: F401, PLC0415 (imported once per process: seconds, not the chart's)

    running = mesh.load(rps=5, duration=10)
    chart = response_flags(mesh, window=checks.window_since(started) + 2, live=True, max_seconds=20)
    assert running.running() and chart.running()  # drew once and returned while traffic still flows
    chart.stop()
    running.stop()
    bars = _bars(chart)
    assert not chart.last_error and chart.refreshes >= 1
    assert set(FLAG_COLORS) <= set(bars)  # the whole vocabulary is in the legend
    shown = {t.name: t.visible for t in chart.figure.data}
    assert shown["FI"] is True and shown["-"] is True and shown["UO"] == "legendonly"  # unseen: greyed
    assert bars["FI"]["details"] >= 10  # every request to details was aborted by the caller's sidecar
    assert bars["-"].get("details", 0) == 0
    assert bars["-"]["productpage"] >= 10 and bars["FI"]["productpage"] == 0  # the page still answered
    fi = next(t for t in chart.figure.data if t.name == "FI")
    hover = dict(zip(fi.x, fi.hovertext, strict=True))
    assert "abort injected" in hover["details"]
    mesh.reset()


def test_per_version_bars_and_a_healthy_mesh_has_no_flags(mesh: Mesh) -> None:
    settle(mesh)
    started = time.time()
    summary = mesh.load(rps=15, duration=2).wait(15)
    counted(mesh, "reviews", summary["completed"], started)  # a scrape after the last answer
    chart = response_flags(mesh, "reviews", window=checks.window_since(started) + 2, live=False)
    bars = _bars(chart)
    assert not chart.running()
    assert set(bars["-"]) >= {"reviews v1", "reviews v2", "reviews v3"}
    assert sum(bars["-"].values()) >= 10
    flagged = {f: sum(v.values()) for f, v in bars.items() if f != "-" and sum(v.values())}
    assert flagged == {}
