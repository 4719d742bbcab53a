"""The workshop's state in one SQLite file (WAL): attendees, results, progress, broadcasts, releases, locks.

Everything the server knows lives in ``<state dir>/workshop.db``, so a restart loses nothing that
was acknowledged. Results are deduplicated on ``(attendee, event id)``: an attendee client that
retries a delivery counts once. ``progress`` holds the current state of each (attendee, lab, step)
— the latest result by the attendee's clock wins, so a result that was queued while the server was
down does not overwrite a newer one. Resetting an attendee clears their progress (their raw results
stay for the record, and results older than the reset no longer count). Removing an attendee keeps
their row and raw results for the record but takes them off the board, the export and the room's
count; their token is refused from then on (the server answers 410).

Synchronous and quick (each call is a few small statements); the server calls it from its loop.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshkit.workshop import auth
from meshkit.workshop.events import ResultEvent

DATABASE_FILE = "workshop.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attendees (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, token_digest TEXT NOT NULL UNIQUE,
    joined_at REAL NOT NULL, last_seen REAL NOT NULL, reset_at REAL NOT NULL DEFAULT 0,
    removed_at REAL
);
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, attendee_id TEXT NOT NULL, event_id TEXT NOT NULL,
    lab TEXT NOT NULL, step TEXT NOT NULL, passed INTEGER NOT NULL, reason TEXT NOT NULL,
    at REAL NOT NULL, received REAL NOT NULL, UNIQUE (attendee_id, event_id)
);
CREATE INDEX IF NOT EXISTS results_by_step ON results (lab, step, seq);
CREATE INDEX IF NOT EXISTS results_by_time ON results (at, passed);
CREATE TABLE IF NOT EXISTS progress (
    attendee_id TEXT NOT NULL, lab TEXT NOT NULL, step TEXT NOT NULL,
    passed INTEGER NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL, failures INTEGER NOT NULL,
    first_at REAL NOT NULL, last_at REAL NOT NULL, failing_since REAL, passed_at REAL,
    PRIMARY KEY (attendee_id, lab, step)
);
CREATE TABLE IF NOT EXISTS solutions (
    attendee_id TEXT NOT NULL, lab TEXT NOT NULL, step TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (attendee_id, lab, step)
);
CREATE TABLE IF NOT EXISTS outline (
    lab TEXT NOT NULL, step TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (lab, step)
);
CREATE TABLE IF NOT EXISTS broadcasts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    lab TEXT NOT NULL, step TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (lab, step)
);
CREATE TABLE IF NOT EXISTS locks (lab TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS activity (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,
    attendee_id TEXT, lab TEXT, step TEXT, text TEXT
);
"""

WHOLE_LAB = ""  # the step value of a release that covers a whole lab


@dataclass(frozen=True, slots=True)
class Attendee:
    id: str
    name: str
    joined_at: float
    removed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Workshop:
    title: str
    instructor_token: str
    join_code: str
    created: float


class WorkshopStore:
    """One workshop in one SQLite file. ``version`` grows with every change (for live updates)."""

    def __init__(self, directory: Path | str, *, title: str = "meshkit workshop") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)  # private even when the directory existed before (mkdir keeps its mode)
        database = self.directory / DATABASE_FILE
        database.touch(mode=0o600, exist_ok=True)
        database.chmod(0o600)  # it holds the instructor token; SQLite's -wal/-shm files copy this mode
        self._db = sqlite3.connect(database, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self.version = 0
        self.workshop = self._load_or_create(title)

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """Columns added since a state dir was created (a workshop.db from an older meshkit)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(attendees)").fetchall()}
        if "removed_at" not in have:
            self._db.execute("ALTER TABLE attendees ADD COLUMN removed_at REAL")

    # -- the workshop itself ----------------------------------------------------------------------

    def _load_or_create(self, title: str) -> Workshop:
        settings = dict(self._db.execute("SELECT key, value FROM settings").fetchall())
        if "instructor_token" not in settings:
            settings = {"title": title, "instructor_token": auth.new_instructor_token(),
                        "join_code": auth.new_join_code(), "created": repr(time.time())}
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO settings VALUES (?, ?)", settings.items())
        return Workshop(settings["title"], settings["instructor_token"], settings["join_code"],
                        float(settings["created"]))

    # -- attendees --------------------------------------------------------------------------------

    def add_attendee(self, name: str) -> tuple[Attendee, str]:
        """A new attendee and their token (returned once; only its digest is stored)."""
        token, now = auth.new_attendee_token(), time.time()
        attendee = Attendee(auth.new_attendee_id(), name, now)
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO attendees (id, name, token_digest, joined_at, last_seen) "
                             "VALUES (?, ?, ?, ?, ?)", (attendee.id, name, auth.digest(token), now, now))
            self._activity("join", now, attendee.id)
        self.version += 1
        return attendee, token

    def attendee_for_token(self, token: str) -> Attendee | None:
        wanted = auth.digest(token)
        row = self._db.execute("SELECT id, name, joined_at, token_digest, removed_at FROM attendees "
                               "WHERE token_digest = ?", (wanted,)).fetchone()
        if row is None or not auth.same_secret(row[3], wanted):
            return None
        return Attendee(row[0], row[1], row[2], row[4])

    def attendee(self, attendee_id: str) -> Attendee | None:
        row = self._db.execute("SELECT id, name, joined_at, removed_at FROM attendees WHERE id = ?",
                               (attendee_id,)).fetchone()
        return Attendee(*row) if row else None

    def reset_attendee(self, attendee_id: str) -> bool:
        """Clear an attendee's progress; False when there is no such attendee."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            updated = self._db.execute("UPDATE attendees SET reset_at = ? WHERE id = ?",
                                       (now, attendee_id)).rowcount
            if not updated:
                return False
            self._db.execute("DELETE FROM progress WHERE attendee_id = ?", (attendee_id,))
            self._activity("reset", now, attendee_id)
        self.version += 1
        return True

    def active_attendees(self) -> int:
        """Attendees in the room (joined and not removed): what the cap counts."""
        return int(self._db.execute("SELECT COUNT(*) FROM attendees WHERE removed_at IS NULL").fetchone()[0])

    def remove_attendee(self, attendee_id: str) -> bool:
        """Take an attendee out of the room: off the board and the export, their progress cleared and
        their token refused from now on; False when there is no such attendee (or already removed)."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            updated = self._db.execute("UPDATE attendees SET removed_at = ? WHERE id = ? "
                                       "AND removed_at IS NULL", (now, attendee_id)).rowcount
            if not updated:
                return False
            self._db.execute("DELETE FROM progress WHERE attendee_id = ?", (attendee_id,))
            self._activity("remove", now, attendee_id)
        self.version += 1
        return True

    # -- results ----------------------------------------------------------------------------------

    def record_results(self, attendee_id: str, events: Iterable[ResultEvent]) -> tuple[int, int]:
        """Store results of one attendee; returns (new, duplicates). One transaction."""
        now = time.time()
        new = duplicates = 0
        with self._db:
            self._db.execute("BEGIN")
            row = self._db.execute("SELECT reset_at FROM attendees WHERE id = ?", (attendee_id,)).fetchone()
            reset_at = float(row[0]) if row else 0.0
            for event in events:
                at = min(event.at, now)  # a client clock ahead of ours does not write the future
                if event.kind == "solution":  # who revealed which solution (first time kept)
                    seen = self._db.execute("INSERT OR IGNORE INTO solutions VALUES (?, ?, ?, ?)",
                                            (attendee_id, event.lab, event.step, at)).rowcount
                    if seen:
                        self._activity("solution", at, attendee_id, lab=event.lab, step=event.step)
                    new, duplicates = new + seen, duplicates + (1 - seen)
                    continue
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO results (attendee_id, event_id, lab, step, passed, reason, at, "
                    "received) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (attendee_id, event.id, event.lab, event.step, int(event.passed), event.reason, at, now),
                ).rowcount
                if not inserted:
                    duplicates += 1
                    continue
                new += 1
                if at >= reset_at:
                    self._update_progress(attendee_id, event, at)
            self._db.execute("UPDATE attendees SET last_seen = ? WHERE id = ?", (now, attendee_id))
        if new:
            self.version += 1
        return new, duplicates

    def _update_progress(self, attendee_id: str, event: ResultEvent, at: float) -> None:
        key = (attendee_id, event.lab, event.step)
        row = self._db.execute("SELECT passed, last_at, failing_since, passed_at FROM progress "
                               "WHERE attendee_id = ? AND lab = ? AND step = ?", key).fetchone()
        failed = 0 if event.passed else 1
        if row is None:
            self._db.execute(
                "INSERT INTO progress VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
                (*key, int(event.passed), event.reason, failed, at, at,
                 None if event.passed else at, at if event.passed else None))
            return
        was_passed, last_at, failing_since, passed_at = row
        if at < last_at:  # an older result delivered late: it counts, but does not set the state
            self._db.execute("UPDATE progress SET attempts = attempts + 1, failures = failures + ?, "
                             "passed_at = COALESCE(passed_at, ?) WHERE attendee_id = ? AND lab = ? "
                             "AND step = ?", (failed, at if event.passed else None, *key))
            return
        if event.passed:
            failing_since, passed_at = None, passed_at or at
        elif was_passed or failing_since is None:
            failing_since = at
        self._db.execute(
            "UPDATE progress SET passed = ?, reason = ?, attempts = attempts + 1, failures = failures + ?, "
            "last_at = ?, failing_since = ?, passed_at = ? WHERE attendee_id = ? AND lab = ? AND step = ?",
            (int(event.passed), event.reason, failed, at, failing_since, passed_at, *key))

    def set_outline(self, lab: str, steps: list[str]) -> None:
        """The steps of a lab in order (as a notebook announces them), so not-started cells show."""
        with self._db:
            self._db.execute("BEGIN")
            for position, step in enumerate(steps):
                self._db.execute("INSERT INTO outline VALUES (?, ?, ?) ON CONFLICT (lab, step) "
                                 "DO UPDATE SET position = excluded.position", (lab, step, position))
        self.version += 1

    # -- instructor actions -----------------------------------------------------------------------

    def broadcast(self, text: str) -> int:
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            cursor = self._db.execute("INSERT INTO broadcasts (text, at) VALUES (?, ?)", (text, now))
            self._activity("broadcast", now, text=text)
        self.version += 1
        return int(cursor.lastrowid or 0)

    def release(self, lab: str, step: str = WHOLE_LAB) -> None:
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR IGNORE INTO releases VALUES (?, ?, ?)", (lab, step, now))
            self._activity("release", now, lab=lab, step=step or None)
        self.version += 1

    def set_locked(self, lab: str, locked: bool) -> None:
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            if locked:
                self._db.execute("INSERT OR IGNORE INTO locks VALUES (?, ?)", (lab, now))
            else:
                self._db.execute("DELETE FROM locks WHERE lab = ?", (lab,))
            self._activity("lock" if locked else "unlock", now, lab=lab)
        self.version += 1

    def _activity(self, kind: str, at: float, attendee_id: str | None = None, *, lab: str | None = None,
                  step: str | None = None, text: str | None = None) -> None:
        self._db.execute("INSERT INTO activity (at, kind, attendee_id, lab, step, text) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (at, kind, attendee_id, lab, step, text))

    # -- reading ----------------------------------------------------------------------------------

    def attendee_view(self) -> dict[str, Any]:
        """What every attendee may read: broadcasts, released solutions, locked labs."""
        messages = [{"id": i, "text": t, "at": at} for i, t, at in self._db.execute(
            "SELECT id, text, at FROM broadcasts ORDER BY id DESC LIMIT 50").fetchall()][::-1]
        released = [[lab, step or None] for lab, step in self._db.execute(
            "SELECT lab, step FROM releases ORDER BY at").fetchall()]
        locked = [lab for (lab,) in self._db.execute("SELECT lab FROM locks ORDER BY lab").fetchall()]
        return {"messages": messages, "released": released, "locked": locked}

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read-only query for the views in `dashboard_state` and `export`."""
        return self._db.execute(sql, params).fetchall()
