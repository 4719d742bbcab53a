"""The instructor's view of the room, computed from the store: grid, stuck, hardest steps, timeline.

`board_state` returns one JSON-ready dict that the dashboard page renders (and that the SSE stream
sends on every change). Columns are (lab, step) pairs: labs in name order, steps in the order a
notebook announced them (outline), then in the order results first arrived. Cells are compact:
``null`` (not started), ``["p", passed_at]``, ``["f", last_reason, failing_since, failures]`` (times
in whole seconds, to keep the board small) or, for a step that passed before and fails now,
``["r", last_reason, failing_since, failures]`` (regressed: progress is the learner's state
now). ``solutions`` lists who revealed which step's solution;
``throttled`` counts, per attendee, the result requests the rate limit refused. Removed attendees
are not on the board and their results do not count (timeline, feed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from meshkit.workshop.storage import WHOLE_LAB, WorkshopStore

STUCK_LIMIT = 10
HARDEST_LIMIT = 8
FEED_LIMIT = 25
TIMELINE_BUCKETS = 30
# results that count: not those of a removed attendee
_COUNTED = "attendee_id NOT IN (SELECT id FROM attendees WHERE removed_at IS NOT NULL)"


def columns(store: WorkshopStore) -> list[tuple[str, str]]:
    """Every (lab, step) anyone reported or a notebook announced, in display order."""
    order: dict[tuple[str, str], tuple[int, int]] = {}
    for lab, step, position in store.rows("SELECT lab, step, position FROM outline"):
        order[(lab, step)] = (0, position)
    for lab, step, first in store.rows("SELECT lab, step, MIN(seq) FROM results GROUP BY lab, step"):
        order.setdefault((lab, step), (1, first))
    return sorted(order, key=lambda key: (key[0], order[key]))


class BoardCache:
    """One board per store version, shared by every open dashboard (``now`` is always fresh)."""

    def __init__(self, store: WorkshopStore, throttled: Mapping[str, int] | None = None) -> None:
        self._store = store
        self._version = -1
        self._board: dict[str, Any] = {}
        self._throttled = throttled if throttled is not None else {}

    def get(self) -> dict[str, Any]:
        if self._version != self._store.version:
            self._board = board_state(self._store)
            self._version = self._store.version
        # result requests refused by the rate limit, per attendee (live counts, not in the store)
        present = {row["id"] for row in self._board["attendees"]}
        throttled = {a: n for a, n in self._throttled.items() if a in present}
        return {**self._board, "now": time.time(), "throttled": throttled}


def board_state(store: WorkshopStore, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    cols = columns(store)
    index = {key: i for i, key in enumerate(cols)}
    attendees: dict[str, dict[str, Any]] = {}
    for attendee_id, name, joined_at, last_seen in store.rows(
            "SELECT id, name, joined_at, last_seen FROM attendees WHERE removed_at IS NULL "
            "ORDER BY joined_at, id"):
        attendees[attendee_id] = {"id": attendee_id, "name": name, "joined_at": joined_at,
                                  "last_seen": last_seen, "passed": 0, "cells": [None] * len(cols)}
    stuck: list[dict[str, Any]] = []
    per_step: dict[tuple[str, str], dict[str, int]] = {}
    for attendee_id, lab, step, passed, reason, failures, last_at, failing_since, passed_at in store.rows(
            "SELECT attendee_id, lab, step, passed, reason, failures, last_at, failing_since, passed_at "
            "FROM progress"):
        row = attendees.get(attendee_id)
        if row is None or (lab, step) not in index:
            continue
        counts = per_step.setdefault((lab, step), {"failing": 0, "ever_failed": 0, "passed": 0})
        counts["ever_failed"] += failures > 0
        if passed:
            row["passed"] += 1
            counts["passed"] += 1
            row["cells"][index[(lab, step)]] = ["p", round(passed_at)]
            continue
        counts["failing"] += 1
        since = round(failing_since or last_at)
        row["cells"][index[(lab, step)]] = ["r" if passed_at else "f", reason, since, failures]
        stuck.append({"attendee": attendee_id, "name": row["name"], "lab": lab, "step": step,
                      "since": failing_since, "last_at": last_at, "reason": reason})
    stuck = _longest_stuck(stuck)
    troubled = sorted(
        ((where, counts) for where, counts in per_step.items() if counts["failing"] or counts["ever_failed"]),
        key=lambda item: (-item[1]["failing"], -item[1]["ever_failed"], *item[0]))[:HARDEST_LIMIT]
    hardest = [{"lab": lab, "step": step, **counts} for (lab, step), counts in troubled]
    view = store.attendee_view()
    released = {(lab, step or WHOLE_LAB) for lab, step in view["released"]}
    labs = []
    for lab in dict.fromkeys(lab for lab, _ in cols) | dict.fromkeys(view["locked"]):
        labs.append({"lab": lab, "steps": [step for lab_, step in cols if lab_ == lab],
                     "locked": lab in view["locked"], "released": (lab, WHOLE_LAB) in released,
                     "released_steps": sorted(step for lab_, step in released if lab_ == lab and step)})
    workshop = store.workshop
    return {
        "title": workshop.title, "join_code": workshop.join_code, "now": now, "version": store.version,
        "columns": [list(key) for key in cols], "labs": labs,
        "attendees": list(attendees.values()), "stuck": stuck, "hardest": hardest,
        "timeline": _timeline(store, now), "feed": _feed(store),
        "messages": view["messages"][-10:],
        "solutions": [{"attendee": a, "name": attendees[a]["name"], "lab": lab, "step": step, "at": at}
                      for a, lab, step, at in store.rows(
                          "SELECT attendee_id, lab, step, at FROM solutions ORDER BY at")
                      if a in attendees],
    }


def _longest_stuck(failing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per attendee, the step they failed on most recently, longest-failing first."""
    latest: dict[str, dict[str, Any]] = {}
    for item in failing:
        current = latest.get(item["attendee"])
        if current is None or item["last_at"] > current["last_at"]:
            latest[item["attendee"]] = item
    return sorted(latest.values(), key=lambda item: item["since"])[:STUCK_LIMIT]


def _timeline(store: WorkshopStore, now: float) -> dict[str, Any]:
    """Passes and failures per time bucket, covering the whole workshop in at most 30 buckets."""
    first = store.rows("SELECT MIN(at) FROM results")[0][0]
    start = float(first) if first is not None else now
    bucket = max(60, math.ceil((now - start) / TIMELINE_BUCKETS / 60) * 60)
    start = now - bucket * TIMELINE_BUCKETS
    passes, fails = [0] * TIMELINE_BUCKETS, [0] * TIMELINE_BUCKETS
    for slot, passed, count in store.rows(
            "SELECT CAST((at - ?) / ? AS INTEGER) AS slot, passed, COUNT(*) FROM results WHERE at >= ? "
            f"AND {_COUNTED} GROUP BY slot, passed", (start, bucket, start)):
        (passes if passed else fails)[min(TIMELINE_BUCKETS - 1, int(slot))] += count
    return {"start": start, "bucket": bucket, "passes": passes, "fails": fails}


def _feed(store: WorkshopStore) -> list[dict[str, Any]]:
    """The latest results and instructor actions, newest first."""
    names = dict(store.rows("SELECT id, name FROM attendees"))  # a removed attendee keeps a name here

    def name(attendee_id: str | None) -> str | None:
        return names.get(attendee_id or "")

    items = [{"at": at, "kind": "pass" if passed else "fail", "name": name(a), "lab": lab, "step": step,
              "text": reason} for a, lab, step, passed, reason, at in store.rows(
        f"SELECT attendee_id, lab, step, passed, reason, received FROM results WHERE {_COUNTED} "
        "ORDER BY seq DESC LIMIT ?",
        (FEED_LIMIT,))]
    items += [{"at": at, "kind": kind, "name": name(a), "lab": lab, "step": step, "text": text}
              for at, kind, a, lab, step, text in store.rows(
        "SELECT at, kind, attendee_id, lab, step, text FROM activity ORDER BY seq DESC LIMIT ?",
        (FEED_LIMIT,))]
    return sorted(items, key=lambda item: -item["at"])[:FEED_LIMIT]
