"""Live charts: plotly FigureWidgets fed by the control plane's telemetry API.

`traffic_split(mesh, "reviews")` stacks the requests per second each version of a service gets;
`service_graph(mesh)` draws a Kiali-like graph (workloads, per-edge rate, error ratio and a
padlock when the hop used mutual TLS); `edge_latency(mesh)` shows p50/p90/p99 per edge with rate,
errors and response flags on hover; `response_flags(mesh)` stacks each destination's requests by
Envoy response flag (FI, DI, UT, UO, URX, UH, RL, NR, UF, "-" for none). Each returns a
`LiveChart`: it draws once before returning (so a headless run under nbclient shows a snapshot),
then refreshes every second in a daemon thread while a load of this mesh runs, and stops by
itself after ``max_seconds`` at the latest. `trace(mesh, id)` draws one trace as a waterfall
(a plain figure: a finished trace does not change).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from meshkit.lab.display import LabError
from meshkit.lab.mesh import Mesh

__all__ = [
    "ERROR_RATIO_RED",
    "FLAG_COLORS",
    "FLAG_MEANINGS",
    "IDLE_GRACE",
    "NODE_FAILING",
    "NODE_OK",
    "PALETTE",
    "LiveChart",
    "edge_label",
    "edge_latency",
    "flag_counts",
    "response_flags",
    "service_graph",
    "trace",
    "traffic_split",
]

PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6"]
ERROR_RATIO_RED = 0.05
IDLE_GRACE = 5.0


def _go() -> Any:
    import plotly.graph_objects as go  # noqa: PLC0415 (heavy; only drawing needs it)

    return go


class LiveChart:
    """A figure plus the thread that keeps it current; `stop()` ends the refreshing."""

    def __init__(self, mesh: Mesh, figure: Any, refresh: Callable[[], None], *, interval: float = 1.0,
                 max_seconds: float = 300.0) -> None:
        self.mesh = mesh
        self.figure = figure
        self._refresh = refresh
        self.interval = interval
        self.max_seconds = max_seconds
        self.refreshes = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        try:
            self._refresh()
            self.refreshes += 1
            self.last_error = ""
        except LabError as exc:  # the mesh went away: keep the last picture, say why in the title
            self.last_error = exc.summary
            self.figure.layout.title.text = f"telemetry unavailable: {exc.summary}"

    def start(self) -> LiveChart:
        self.refresh()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="meshkit-chart", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        idle_since: float | None = None
        while not self._stop.wait(self.interval) and time.monotonic() < deadline:
            self.refresh()
            if self.mesh.loading():
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_GRACE:  # one last picture of the finished load
                break

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _ipython_display_(self) -> None:
        from IPython.display import display  # noqa: PLC0415

        display(self.figure)


def traffic_split(mesh: Mesh, service: str = "reviews", *, window: float = 60.0, live: bool = True,
                  max_seconds: float = 300.0) -> LiveChart:
    """Requests per second to each version of ``service``, stacked, over the last ``window`` s."""
    go = _go()
    versions = sorted({w["version"] for w in mesh.workloads() if w.get("service") == service})
    figure = go.FigureWidget(layout={
        "title": {"text": f"{service}: requests/s by version"}, "height": 320,
        "xaxis": {"title": "seconds ago"}, "yaxis": {"title": "req/s", "rangemode": "tozero"},
        "margin": {"l": 50, "r": 20, "t": 50, "b": 40}})
    for i, version in enumerate(versions):
        figure.add_scatter(name=version, x=[], y=[], mode="lines", stackgroup="split",
                           line={"color": PALETTE[i % len(PALETTE)]})

    def refresh() -> None:
        answer = mesh.series(service, window=window, step=1.0)
        points = answer.get("points", [])
        now = time.time()
        xs = [round(p["t"] - now, 1) for p in points]
        seen = sorted({v for p in points for v in p.get("rps", {})} | {t.name for t in figure.data})
        for version in seen:
            if version not in {t.name for t in figure.data}:
                figure.add_scatter(name=version, x=[], y=[], mode="lines", stackgroup="split",
                                   line={"color": PALETTE[len(figure.data) % len(PALETTE)]})
        with figure.batch_update():
            for trace in figure.data:
                trace.x = xs
                trace.y = [round(p.get("rps", {}).get(trace.name, 0.0), 2) for p in points]

    chart = LiveChart(mesh, figure, refresh, max_seconds=max_seconds)
    return chart.start() if live else _once(chart)


def _once(chart: LiveChart) -> LiveChart:
    chart.refresh()
    return chart


def _layers(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Left-to-right positions: a node's column is its longest path from a node nobody calls."""
    depth = {n["id"]: 0 for n in nodes}
    for _ in range(len(nodes)):  # bounded relaxation (the graph may have cycles)
        changed = False
        for e in edges:
            if e["source"] in depth and e["target"] in depth and depth[e["target"]] < depth[e["source"]] + 1 \
                    and depth[e["source"]] + 1 < len(nodes):
                depth[e["target"]] = depth[e["source"]] + 1
                changed = True
        if not changed:
            break
    columns: dict[int, list[str]] = {}
    for node_id in sorted(depth):
        columns.setdefault(depth[node_id], []).append(node_id)
    positions = {}
    for col, ids in columns.items():
        for row, node_id in enumerate(ids):
            positions[node_id] = (float(col), (len(ids) - 1) / 2.0 - row)
    return positions


def edge_label(edge: dict[str, Any]) -> str:
    # text, not a padlock glyph: an emoji needs a font Debian's chromium (and many JupyterLab hosts) lack
    lock = "mTLS · " if edge.get("mtls") else ""
    return f"{lock}{edge.get('rps', 0.0):.1f} rps, {edge.get('error_rate', 0.0):.0%} err"


NODE_OK = "#4c78a8"
NODE_FAILING = "#d62728"  # its callers got errors from it (a killed app's sidecar answers 503)


def service_graph(mesh: Mesh, *, window: float = 10.0, live: bool = True,
                  max_seconds: float = 300.0) -> LiveChart:
    """Workloads as nodes, calls as edges labelled with rate, error ratio and an mTLS padlock."""
    go = _go()
    title = f"service graph (last {window:.0f} s)"
    figure = go.FigureWidget(layout={
        "title": {"text": title}, "height": 380, "showlegend": False,
        "xaxis": {"visible": False}, "yaxis": {"visible": False},
        "margin": {"l": 20, "r": 20, "t": 50, "b": 20}})
    figure.add_scatter(name="ok", x=[], y=[], mode="lines", line={"color": "#888", "width": 2},
                       hoverinfo="skip")
    figure.add_scatter(name="errors", x=[], y=[], mode="lines", line={"color": "#d62728", "width": 3},
                       hoverinfo="skip")
    figure.add_scatter(name="workloads", x=[], y=[], mode="markers+text", textposition="bottom center",
                       marker={"size": 26, "color": "#4c78a8"})

    def refresh() -> None:
        answer = mesh.graph(window)
        nodes, edges = answer.get("nodes", []), answer.get("edges", [])
        if not edges:  # keep the last picture rather than redrawing it empty
            figure.layout.title.text = f"{title}: no traffic in the last {window:.0f} s — run a load cell"
            return
        failing = {e["target"] for e in edges if e.get("error_rate", 0.0) > ERROR_RATIO_RED}
        pos = _layers(nodes, edges)
        lines: dict[bool, tuple[list[float | None], list[float | None]]] = {False: ([], []), True: ([], [])}
        notes = []
        for e in edges:
            (x0, y0), (x1, y1) = pos[e["source"]], pos[e["target"]]
            xs, ys = lines[e.get("error_rate", 0.0) > ERROR_RATIO_RED]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
            notes.append({"x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "text": edge_label(e), "showarrow": False,
                          "font": {"size": 11}, "bgcolor": "rgba(255,255,255,0.8)"})
        ids = [n["id"] for n in nodes]
        with figure.batch_update():
            figure.data[0].x, figure.data[0].y = lines[False]
            figure.data[1].x, figure.data[1].y = lines[True]
            figure.data[2].x = [pos[i][0] for i in ids]
            figure.data[2].y = [pos[i][1] for i in ids]
            figure.data[2].text = ids
            figure.data[2].marker.color = [NODE_FAILING if i in failing else NODE_OK for i in ids]
            figure.layout.annotations = notes
            figure.layout.title.text = title
            # room left and right for the outer nodes' labels (istio-ingressgateway was cut off)
            figure.layout.xaxis.range = [-0.6, max((x for x, _ in pos.values()), default=0.0) + 0.6]

    chart = LiveChart(mesh, figure, refresh, max_seconds=max_seconds)
    return chart.start() if live else _once(chart)


def edge_latency(mesh: Mesh, *, window: float = 30.0, live: bool = True,
                 max_seconds: float = 300.0) -> LiveChart:
    """Per edge (caller → service): p50/p90/p99 latency bars, with rate, errors and flags on hover."""
    go = _go()
    figure = go.FigureWidget(layout={
        "title": {"text": f"latency per edge (last {window:.0f} s)"}, "height": 340, "barmode": "group",
        "yaxis": {"title": "ms", "rangemode": "tozero"}, "margin": {"l": 50, "r": 20, "t": 50, "b": 90}})
    for i, quantile in enumerate(("p50", "p90", "p99")):
        figure.add_bar(name=quantile, x=[], y=[], marker={"color": PALETTE[i]})

    def refresh() -> None:
        edges = mesh.telemetry(window, reporter="source").get("edges", [])
        names = [f"{e['source_workload']} → {e['destination_service']} {e['destination_version']}"
                 for e in edges]
        hover = [f"{e['rps']:.1f} rps, {e['error_rate']:.0%} errors, flags {e.get('flags') or '-'}"
                 + (", mTLS" if e.get("mtls") else "") for e in edges]
        with figure.batch_update():
            for trace in figure.data:
                trace.x = names
                trace.y = [round((e.get("latency_ms") or {}).get(trace.name) or 0.0, 2) for e in edges]
                trace.hovertext = hover

    chart = LiveChart(mesh, figure, refresh, max_seconds=max_seconds)
    return chart.start() if live else _once(chart)


# Envoy's response flags in a fixed order and colour, so a flag keeps its colour across charts.
FLAG_COLORS = {
    "-": "#54a24b",  # none: the request went through untouched
    "DI": "#eeca3b",  # injected delay (the request still succeeded, later)
    "FI": "#e45756",  # injected abort
    "UT": "#f58518",  # upstream timeout
    "URX": "#b279a2",  # retries exhausted
    "UO": "#9d755d",  # circuit-breaker overflow
    "UH": "#4c78a8",  # no healthy upstream
    "UF": "#72b7b2",  # upstream connect failure
    "RL": "#ff9da6",  # rate limited
    "NR": "#bab0ac",  # no route
}
FLAG_MEANINGS = {
    "-": "no flag", "DI": "delay injected", "FI": "abort injected", "UT": "upstream timeout",
    "URX": "retries exhausted", "UO": "circuit breaker overflow", "UH": "no healthy upstream",
    "UF": "upstream connect failure", "RL": "rate limited", "NR": "no route", "DC": "downstream closed",
}


def flag_counts(edges: list[dict[str, Any]], service: str | None = None) -> dict[str, dict[str, float]]:
    """Destination -> {flag: requests} from telemetry edges; requests without a flag count as "-".

    With ``service`` the destinations are its versions ("reviews v2"), otherwise whole services.
    A combined flag string ("DI,FI": delayed, then aborted) stays one category, as Envoy logs it.
    """
    counts: dict[str, dict[str, float]] = {}
    for e in edges:
        if service is not None and e.get("destination_service") != service:
            continue
        name = str(e.get("destination_service") or "unknown")
        if service is not None:
            name = f"{name} {e.get('destination_version') or '?'}"
        flags = {str(k): float(v) for k, v in (e.get("flags") or {}).items()}
        row = counts.setdefault(name, {})
        for flag, n in flags.items():
            row[flag] = row.get(flag, 0.0) + n
        unflagged = float(e.get("requests", 0)) - sum(flags.values())
        if unflagged > 0:
            row["-"] = row.get("-", 0.0) + unflagged
    return dict(sorted(counts.items()))


def _flag_order(flag: str) -> tuple[int, str]:
    known = list(FLAG_COLORS)
    return (known.index(flag), flag) if flag in known else (len(known), flag)


def response_flags(mesh: Mesh, service: str | None = None, *, window: float = 30.0, live: bool = True,
                   max_seconds: float = 300.0) -> LiveChart:
    """Requests of the last ``window`` s per destination, stacked by Envoy response flag.

    Every destination service (or, with ``service``, every version of it) is a bar; its segments
    are the requests by flag, "-" (green) for those that went through untouched; flags not seen in
    the window stay in the legend, greyed, so the vocabulary is always in view. Counted by the
    caller's sidecar (reporter="source"), which is the one that injects faults, times out and
    retries; callers outside the mesh are counted by the destination.
    """
    go = _go()
    subject = f"{service} by version" if service else "per destination service"
    figure = go.FigureWidget(layout={
        "title": {"text": f"response flags, {subject} (last {window:.0f} s)"}, "height": 340,
        "barmode": "stack", "legend": {"title": {"text": "flag"}},
        "yaxis": {"title": "requests", "rangemode": "tozero"},
        "margin": {"l": 50, "r": 20, "t": 50, "b": 60}})
    for flag, color in FLAG_COLORS.items():
        figure.add_bar(name=flag, x=[], y=[], marker={"color": color})

    def refresh() -> None:
        counts = flag_counts(mesh.telemetry(window).get("edges", []), service)
        names = list(counts)
        flags = sorted({f for row in counts.values() for f in row} | {t.name for t in figure.data},
                       key=_flag_order)
        for flag in flags:
            if flag not in {t.name for t in figure.data}:  # a combination such as "DI,FI"
                color = PALETTE[len(figure.data) % len(PALETTE)]
                figure.add_bar(name=flag, x=[], y=[], marker={"color": color})
        with figure.batch_update():
            for trace in figure.data:
                meaning = " + ".join(FLAG_MEANINGS.get(f, f) for f in trace.name.split(","))
                trace.x = names
                ys = [round(counts[n].get(trace.name, 0.0)) for n in names]
                trace.y = ys
                trace.hovertext = [f"{trace.name} ({meaning}): {round(counts[n].get(trace.name, 0.0))} of "
                                   f"{round(sum(counts[n].values()))} requests" for n in names]
                trace.visible = True if any(ys) else "legendonly"  # unseen flags: greyed in the legend

    chart = LiveChart(mesh, figure, refresh, max_seconds=max_seconds)
    return chart.start() if live else _once(chart)


SPAN_COLOURS = {"CLIENT": "#4c78a8", "SERVER": "#54a24b"}
FLAGGED = "#f58518"
FAILED = "#e45756"


def trace(mesh: Mesh, trace_id: str) -> Any:
    """One trace (a trace id or an x-request-id) as a waterfall: a bar per span on the trace's timeline,
    indented by depth, coloured by kind (client blue, server green), amber with a response flag, red
    when it failed; the hover tells status, flags, upstream cluster and peer."""
    from meshkit.control.trace_view import waterfall  # noqa: PLC0415

    spans = mesh.trace(trace_id)
    if not spans:
        raise LabError(f"trace {trace_id}: the collector has no such trace (only sampled requests are "
                       "traced, 1% by default: send x-client-trace-id to force one)")
    rows = waterfall(spans)
    tags = {s["id"]: s.get("tags") or {} for s in spans}
    go = _go()
    labels = [f"{'  ' * r.depth}{r.label}" for r in rows]
    colours = [FAILED if r.error else FLAGGED if r.flags not in ("-", "")
               else SPAN_COLOURS.get(r.kind, "#999") for r in rows]
    hover = [f"{r.kind} span of {r.service}<br>{r.name}<br>status {r.status}, flags {r.flags}<br>"
             f"start +{r.offset_ms:.1f} ms, {r.duration_ms:.1f} ms<br>"
             f"cluster {tags[r.span_id].get('upstream_cluster', '-')}, "
             f"peer {tags[r.span_id].get('peer.address', '-')}" for r in rows]
    total = max(r.offset_ms + r.duration_ms for r in rows)
    figure = go.Figure(go.Bar(
        y=list(range(len(rows))), x=[max(r.duration_ms, total / 500) for r in rows],
        base=[r.offset_ms for r in rows], orientation="h", marker_color=colours,
        text=[f"{r.duration_ms:.1f} ms" for r in rows], textposition="outside",
        hovertext=hover, hoverinfo="text",
    ))
    figure.update_layout(
        title=f"trace {spans[0]['traceId']} ({len(rows)} spans, {total:.1f} ms)",
        xaxis_title="ms since the first span started", height=120 + 28 * len(rows),
        yaxis={"tickmode": "array", "tickvals": list(range(len(rows))), "ticktext": labels,
               "autorange": "reversed"},
        margin={"l": 20, "r": 40, "t": 50, "b": 40}, showlegend=False,
    )
    return figure
