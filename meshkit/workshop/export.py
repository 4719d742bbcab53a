"""The instructor's CSV export: one row per attendee and step, with the state the dashboard shows.

Cells that a spreadsheet would read as a formula (starting with ``= + - @``, tab or CR) get a
leading apostrophe, so a name like ``=HYPERLINK(...)`` stays text when the file is opened.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from meshkit.workshop.board import columns
from meshkit.workshop.storage import WorkshopStore

HEADER = ["attendee_id", "name", "lab", "step", "status", "attempts", "failures", "last_reason",
          "first_at", "last_at", "passed_at"]


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _iso(timestamp: float | None) -> str:
    return "" if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def progress_csv(store: WorkshopStore) -> str:
    """Every attendee x every known step (``not started`` included), in dashboard order."""
    progress = {(a, lab, step): rest for a, lab, step, *rest in store.rows(
        "SELECT attendee_id, lab, step, passed, attempts, failures, reason, first_at, last_at, passed_at "
        "FROM progress")}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    cols = columns(store)
    for attendee_id, name in store.rows("SELECT id, name FROM attendees WHERE removed_at IS NULL "
                                          "ORDER BY joined_at, id"):
        for lab, step in cols:
            row = progress.get((attendee_id, lab, step))
            if row is None:
                writer.writerow([_cell(v) for v in (attendee_id, name, lab, step, "not started",
                                                    0, 0, "", "", "", "")])
                continue
            passed, attempts, failures, reason, first_at, last_at, passed_at = row
            writer.writerow([_cell(v) for v in (
                attendee_id, name, lab, step, "passed" if passed else "failing", attempts, failures,
                "" if passed else reason, _iso(first_at), _iso(last_at), _iso(passed_at))])
    return out.getvalue()
