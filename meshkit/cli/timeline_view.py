"""The apply-to-effect timeline in the terminal: `meshkit apply --wait` and `meshkit history N`.

Renders the control plane's ``GET /api/v1/history/{n}/timeline`` document (`control.timeline_api`)
as a rich table: one row per proxy whose snapshot the revision changed, each step's time after the
revision was stored, and a bar placing the ACK on a common time axis. It only prints; it never
decides what is synced (the control plane does).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshkit.control.client import ControlClient

BAR_WIDTH = 24
STATE_WORDS = {
    "synced": "every affected proxy ACKed",
    "pending": "waiting for proxies to answer",
    "nacked": "a proxy REJECTED its snapshot (NACK)",
    "superseded": "a later revision replaced it before every proxy ACKed it",
    "unrecorded": "no push of it was recorded (compiled together with a later revision, or before "
                  "this control plane started)",
}


def _after(start: float | None, when: float | None) -> str:
    if when is None:
        return "-"
    if start is None:
        return time.strftime("%H:%M:%S", time.localtime(when))
    ms = (when - start) * 1000.0
    return f"+{ms:.0f} ms" if ms < 10_000 else f"+{ms / 1000.0:.1f} s"


def _bar(start: float | None, when: float | None, span: float) -> str:
    if start is None or when is None or span <= 0:
        return ""
    at = min(BAR_WIDTH - 1, max(0, round((when - start) / span * (BAR_WIDTH - 1))))
    return "─" * at + "●"


def render(doc: dict[str, Any]) -> Any:
    """A rich renderable (a table with a caption) for one timeline document."""
    from rich.table import Table  # noqa: PLC0415 (lazy: keep --help fast)
    from rich.text import Text  # noqa: PLC0415

    stored = doc.get("stored")
    rows = doc.get("proxies", [])
    ends = [r[k] for r in rows for k in ("acked", "nacked") if r.get(k) is not None]
    span = (max(ends) - stored) if ends and stored is not None else 0.0
    title = f"revision {doc['revision']}: {doc.get('summary', '')}"
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in ("PROXY", "VERSION", "PUSHED", "ACK", "FIRST REQUEST", "ACK ON THE TIMELINE"):
        table.add_column(column, no_wrap=column != "PROXY")
    for row in rows:
        if row.get("nacked") is not None:
            answer = Text(f"NACK {_after(stored, row['nacked'])}", style="bold red")
        elif row.get("acked") is not None:
            answer = Text(_after(stored, row["acked"]), style="green")
        elif row.get("superseded"):
            answer = Text("superseded", style="yellow")
        elif not row.get("connected"):
            answer = Text("disconnected", style="yellow")
        else:
            answer = Text("waiting", style="yellow")
        first = _after(stored, row.get("first_request")) if row.get("first_request") else "no request yet"
        table.add_row(row["id"], row["version"][:12], _after(stored, row.get("pushed")), answer, first,
                      _bar(stored, row.get("acked") or row.get("nacked"), span))
    lines = [f"stored {_after(None, stored)}; compiled {_after(stored, doc.get('compiled'))}; "
             f"{doc['state']}: {STATE_WORDS.get(doc['state'], doc['state'])}"]
    for row in rows:
        if row.get("reason"):
            lines.append(f"{row['id']} refused it: {row['reason']}")
    unchanged = doc.get("unchanged") or []
    if unchanged:
        more = ", ..." if len(unchanged) > 6 else ""
        lines.append(f"{len(unchanged)} other {'proxy' if len(unchanged) == 1 else 'proxies'} unchanged: "
                     f"{', '.join(unchanged[:6])}{more}")
    if not rows and doc["state"] != "unrecorded":
        lines.append("no proxy's snapshot changed with this revision")
    table.caption = "\n".join(lines)
    table.caption_justify = "left"
    return table


def wait_for(client: ControlClient, revision: int, timeout: float) -> dict[str, Any]:
    """Poll the control plane (its ``wait`` in slices under the client's socket timeout) until the
    revision is no longer pending or ``timeout`` seconds pass; the last document, ``waited`` set."""
    deadline = time.monotonic() + timeout
    while True:
        left = max(0.0, deadline - time.monotonic())
        doc: dict[str, Any] = client.timeline(revision, wait=round(min(left, 20.0), 3))
        if doc.get("waited") or left <= 0:
            return doc
