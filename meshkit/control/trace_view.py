"""A trace laid out as a waterfall: spans in call order with depth, offset and duration.

Shared by ``meshkit trace ID`` (rich, in the terminal) and ``charts.trace`` (plotly, in notebooks) so
both draw the same thing. Pure data: no I/O, no drawing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WaterfallRow:
    span_id: str
    depth: int  # 0 for a root; a child is one deeper than its parent
    service: str  # istio.canonical_service of the proxy that recorded it
    kind: str  # CLIENT (caller's sidecar, gateway) or SERVER (callee's sidecar)
    name: str  # operation name (Istio: <host>:<port>/*)
    offset_ms: float  # start, from the start of the trace
    duration_ms: float
    status: str  # HTTP status code ("0": no response)
    flags: str  # Envoy response flags ("-": none)
    error: bool
    url: str

    @property
    def label(self) -> str:
        arrow = "→" if self.kind == "CLIENT" else "⇢"
        return f"{self.service} {arrow} {self.name}"


def waterfall(spans: list[dict[str, Any]]) -> list[WaterfallRow]:
    """Depth-first from the roots, children by start time (a span whose parent is missing is a root)."""
    if not spans:
        return []
    ids = {s["id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span.get("parentId")
        children.setdefault(parent if parent in ids else None, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s["timestamp"], s.get("kind") != "CLIENT"))
    start = min(s["timestamp"] for s in spans)
    rows: list[WaterfallRow] = []
    stack = [(span, 0) for span in reversed(children.get(None, []))]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        if span["id"] in seen:  # a span id reused by a broken client: show it once
            continue
        seen.add(span["id"])
        tags = span.get("tags") or {}
        local = span.get("localEndpoint") or {}
        rows.append(WaterfallRow(
            span_id=span["id"], depth=depth,
            service=tags.get("istio.canonical_service") or local.get("serviceName", ""),
            kind=span.get("kind", ""), name=span.get("name", ""),
            offset_ms=(span["timestamp"] - start) / 1000.0, duration_ms=span["duration"] / 1000.0,
            status=tags.get("http.status_code", ""), flags=tags.get("response_flags", "-"),
            error=tags.get("error") == "true", url=tags.get("http.url", ""),
        ))
        stack.extend((child, depth + 1) for child in reversed(children.get(span["id"], [])))
    return rows
