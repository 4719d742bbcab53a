"""The attendee's side: join a workshop, report check results, read broadcasts, releases and locks.

    attendee = join("http://10.0.0.5:15080", "ABC-234", "Ada")
    attendee.report("02-canary", "shift-10", passed=False, reason="reviews-v3 got 0% of traffic")
    attendee.messages(); attendee.released("02-canary", "shift-10"); attendee.locked("03-mirroring")

Nothing is lost while the server is down: `Attendee.report` first writes the event to a queue in
the attendee's state dir (SQLite, ``$MESHKIT_HOME/workshop/client.db``), then tries to deliver;
what cannot be delivered now is retried by a background thread (backing off up to
`MAX_BACKOFF` seconds) and by the next report, and survives a kernel restart. Each event carries
an id made once, so a delivery that is retried after the server did store it counts once.

Deliberately synchronous (stdlib ``urllib`` with short timeouts): notebook cells are synchronous
and the kernel's own event loop is already running, so an asyncio client could not be awaited from
a check. A report never blocks a cell for longer than ``timeout`` seconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meshkit.control.address import default_home
from meshkit.workshop import auth, events

CLIENT_DB = "client.db"
MAX_BACKOFF = 10.0
VIEW_MAX_AGE = 2.0   # seconds a fetched view (messages, releases, locks) is reused
BATCH = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity (
    url TEXT NOT NULL, code TEXT NOT NULL, name TEXT NOT NULL, attendee_id TEXT NOT NULL, token TEXT NOT NULL,
    PRIMARY KEY (url, code, name)
);
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, attendee_id TEXT NOT NULL, event_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS view (attendee_id TEXT PRIMARY KEY, body TEXT NOT NULL, fetched REAL NOT NULL);
"""


class WorkshopError(Exception):
    """The workshop server refused something or cannot be reached (the message says which)."""


def default_state_dir() -> Path:
    """``$MESHKIT_HOME/workshop`` (``~/.meshkit/workshop``)."""
    return default_home() / "workshop"


@contextmanager
def _database(state_dir: Path) -> Iterator[sqlite3.Connection]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)  # the attendee token lives here, even if the directory existed before
    database = state_dir / CLIENT_DB
    database.touch(mode=0o600, exist_ok=True)
    database.chmod(0o600)
    connection = sqlite3.connect(database, timeout=10, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
        yield connection
    finally:
        connection.close()


class _Transient(Exception):
    """The server did not answer (down, restarting, network) or asked to slow down: try again later
    (``retry_after`` seconds at the earliest, when the server said so)."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _request(method: str, url: str, body: object | None = None, token: str | None = None,
             timeout: float = 2.0) -> tuple[int, Any]:
    """(status, decoded JSON) for a 2xx or 4xx answer; `_Transient` for anything else."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        if error.code >= 500:
            raise _Transient(f"HTTP {error.code}") from None
        if error.code == 429:  # rate limited: the results stay queued until Retry-After
            try:
                wait = float(error.headers.get("Retry-After") or 1)
            except ValueError:
                wait = 1.0
            raise _Transient(f"rate limited by the workshop server (retry after {wait:g} s)",
                             min(max(wait, 0.0), MAX_BACKOFF)) from None
        try:
            answer = json.loads(error.read() or b"null")
        except ValueError:
            answer = None
        return error.code, answer
    except (OSError, ValueError) as error:  # URLError, refused, reset, timeout, garbage
        raise _Transient(str(error)) from None


def _check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise WorkshopError(f"workshop url {url!r}: expected http://host:port or https://...")
    return url.rstrip("/")


def join(url: str, code: str, name: str, *, state_dir: Path | str | None = None,
         timeout: float = 5.0) -> Attendee:
    """Join the workshop at ``url`` with the instructor's ``code`` as ``name``.

    Joining again with the same url, code and name (a restarted kernel, another notebook) gives
    back the same attendee, from the state dir, without asking the server.
    """
    url, name = _check_url(url), events.check_name(name, "join.name")
    code = auth.normalize_code(code)
    directory = Path(state_dir) if state_dir is not None else default_state_dir()
    with _database(directory) as db:
        row = db.execute("SELECT attendee_id, token FROM identity WHERE url = ? AND code = ? AND name = ?",
                         (url, code, name)).fetchone()
    if row is None:
        try:
            status, answer = _request("POST", f"{url}/api/join", {"code": code, "name": name},
                                      timeout=timeout)
        except _Transient as error:
            raise WorkshopError(f"cannot reach the workshop server at {url}: {error}") from None
        if status != 201 or not isinstance(answer, dict):
            reason = answer.get("error") if isinstance(answer, dict) else f"HTTP {status}"
            raise WorkshopError(f"the workshop server at {url} refused to join: {reason}")
        row = (answer["attendee_id"], answer["token"])
    with _database(directory) as db:  # (re)written: the latest join is the one `joined()` finds
        db.execute("INSERT OR REPLACE INTO identity VALUES (?, ?, ?, ?, ?)", (url, code, name, *row))
    attendee = Attendee(url, row[0], row[1], name, state_dir=directory)
    if attendee.pending():
        attendee.flush_in_background()
    return attendee


def joined(*, state_dir: Path | str | None = None) -> Attendee | None:
    """The attendee this state dir joined most recently (what a notebook's `Lab` reports as), or None.

    Lets every notebook of the attendee find their workshop identity without module-level state:
    ``meshkit.lab.join(...)`` joins once; each ``Lab`` asks `joined()`.
    """
    directory = Path(state_dir) if state_dir is not None else default_state_dir()
    if not (directory / CLIENT_DB).exists():
        return None
    with _database(directory) as db:
        row = db.execute("SELECT url, attendee_id, token, name FROM identity "
                         "ORDER BY rowid DESC LIMIT 1").fetchone()
    if row is None:
        return None
    attendee = Attendee(row[0], row[1], row[2], row[3], state_dir=directory)
    if attendee.pending():
        attendee.flush_in_background()
    return attendee


def join_from_env(*, state_dir: Path | str | None = None) -> Attendee | None:
    """Join from ``MESHKIT_WORKSHOP_URL``/``_CODE``/``_NAME`` (name defaults to ``JUPYTERHUB_USER``,
    then ``USER``), as Binder or JupyterHub can set them; None when no workshop is configured."""
    url, code = os.environ.get("MESHKIT_WORKSHOP_URL"), os.environ.get("MESHKIT_WORKSHOP_CODE")
    if not url or not code:
        return None
    name = (os.environ.get("MESHKIT_WORKSHOP_NAME") or os.environ.get("JUPYTERHUB_USER")
            or os.environ.get("USER") or "attendee")
    return join(url, code, name, state_dir=state_dir)


class Attendee:
    """One joined attendee: reports results (queued, retried) and reads what the instructor shares."""

    def __init__(self, url: str, attendee_id: str, token: str, name: str, *, state_dir: Path | str,
                 timeout: float = 2.0) -> None:
        self.url = _check_url(url)
        self.id = attendee_id
        self.name = name
        self.state_dir = Path(state_dir)
        self.timeout = timeout
        self.last_error: str | None = None
        self.removed: str | None = None  # the server's message once the instructor removed us
        self._retry_after = 0.0
        self._token = token
        self._flush_lock = threading.Lock()
        self._retrier: threading.Thread | None = None
        self._retrier_lock = threading.Lock()
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"Attendee(name={self.name!r}, id={self.id!r}, url={self.url!r}, pending={self.pending()})"

    # -- reporting --------------------------------------------------------------------------------

    def report(self, lab: str, step: str, passed: bool, reason: str = "", at: float | None = None, *,
               kind: str = "check") -> bool:
        """Record one check result (``at``: when it was checked, default now), or with
        ``kind="solution"`` that the learner revealed the step's solution; True if the server has
        it now, False if it is queued for retry. Raises `events.InputError` only for bad ids."""
        event = events.new_result(lab, step, bool(passed), reason[: events.MAX_REASON], at, kind=kind)
        if self.removed is not None:  # the instructor took us out of the room: nothing more to send
            self.last_error = self.removed
            return False
        with _database(self.state_dir) as db:
            db.execute("INSERT INTO queue (attendee_id, event_id, body) VALUES (?, ?, ?)",
                       (self.id, event.id, json.dumps(event.to_wire())))
        if self._retrying():  # the server is known to be away: do not make the cell wait for it
            return False
        delivered = self.flush() == 0
        if self.removed is not None:  # told just now: the event was dropped, not delivered
            return False
        if not delivered:
            self.flush_in_background()
        return delivered

    def outline(self, lab: str, steps: list[str]) -> bool:
        """Tell the dashboard a lab's steps in order (so not-started steps show); best effort."""
        body = {"lab": lab, "steps": steps}
        events.parse_outline(body)
        if self._retrying():
            return False
        try:
            status, _ = _request("POST", f"{self.url}/api/attendees/{self.id}/outline", body,
                                      self._token, self.timeout)
        except _Transient as error:
            self.last_error = str(error)
            return False
        return status == 200

    def pending(self) -> int:
        """Results written to the queue and not yet acknowledged by the server."""
        with _database(self.state_dir) as db:
            row = db.execute("SELECT COUNT(*) FROM queue WHERE attendee_id = ?", (self.id,)).fetchone()
        return int(row[0])

    def flush(self) -> int:
        """Deliver queued results now (in batches); returns how many are still pending."""
        with self._flush_lock:
            while True:
                with _database(self.state_dir) as db:
                    batch = db.execute("SELECT seq, body FROM queue WHERE attendee_id = ? "
                                       "ORDER BY seq LIMIT ?", (self.id, BATCH)).fetchall()
                if not batch:
                    self.last_error = None
                    return 0
                try:
                    status, answer = _request("POST", f"{self.url}/api/attendees/{self.id}/results",
                                              {"results": [json.loads(body) for _, body in batch]},
                                              self._token, self.timeout)
                except _Transient as error:
                    self._retry_after = error.retry_after
                    self.last_error = (f"{error}; results are queued" if error.retry_after else
                                       f"workshop server unreachable ({error}); results are queued")
                    return self.pending()
                if status == 410:  # removed by the instructor: these results can never count
                    self._removed((answer or {}).get("error", "removed from the workshop"))
                    return 0
                if status == 400:  # cannot ever be accepted: drop it rather than block the queue
                    self.last_error = f"the server rejected results: {(answer or {}).get('error')}"
                elif status != 200:
                    self.last_error = f"the server refused results: {(answer or {}).get('error', status)}"
                    return self.pending()
                with _database(self.state_dir) as db:
                    db.execute(f"DELETE FROM queue WHERE seq IN ({','.join('?' * len(batch))})",
                               [seq for seq, _ in batch])

    def _removed(self, message: str) -> None:
        self.removed = self.last_error = message
        with _database(self.state_dir) as db:
            db.execute("DELETE FROM queue WHERE attendee_id = ?", (self.id,))

    def _retrying(self) -> bool:
        return self._retrier is not None and self._retrier.is_alive()

    def flush_in_background(self) -> None:
        """Keep retrying in a daemon thread until the queue is empty (or `close`)."""
        with self._retrier_lock:
            if self._retrying():
                return
            self._stop.clear()
            self._retrier = threading.Thread(target=self._retry, name=f"workshop-retry-{self.id}",
                                             daemon=True)
            self._retrier.start()

    def _retry(self) -> None:
        delay = 0.5
        while not self._stop.wait(max(delay, self._retry_after)):
            if self.flush() == 0:
                return
            delay = min(delay * 2, MAX_BACKOFF)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the retry thread (queued results stay in the state dir for next time)."""
        self._stop.set()
        if self._retrier is not None:
            self._retrier.join(timeout)

    # -- what the instructor shares ---------------------------------------------------------------

    def refresh(self, *, max_age: float = VIEW_MAX_AGE) -> dict[str, Any]:
        """Broadcasts, released solutions and locked labs; the last known ones when offline."""
        with _database(self.state_dir) as db:
            row = db.execute("SELECT body, fetched FROM view WHERE attendee_id = ?", (self.id,)).fetchone()
        if row is not None and (time.time() - row[1] < max_age or self._retrying()):
            return dict(json.loads(row[0]))  # fresh enough, or the server is known to be away
        try:
            status, answer = _request("GET", f"{self.url}/api/attendees/{self.id}/view", None,
                                      self._token, self.timeout)
        except _Transient as error:
            self.last_error = f"workshop server unreachable ({error})"
            status, answer = 0, None
        if status == 410 and isinstance(answer, dict):
            self._removed(str(answer.get("error", "removed from the workshop")))
        if status != 200 or not isinstance(answer, dict):  # keep the last known view; ask again later
            answer = dict(json.loads(row[0])) if row else {"messages": [], "released": [], "locked": []}
        with _database(self.state_dir) as db:
            db.execute("INSERT OR REPLACE INTO view VALUES (?, ?, ?)",
                       (self.id, json.dumps(answer), time.time()))
        return answer

    def messages(self) -> list[dict[str, Any]]:
        """The instructor's broadcasts, oldest first: ``[{"id", "text", "at"}]``."""
        return list(self.refresh()["messages"])

    def released(self, lab: str, step: str | None = None) -> bool:
        """Whether the instructor released the solution of ``step`` (or of the whole ``lab``)."""
        for released_lab, released_step in self.refresh()["released"]:
            if released_lab == lab and (released_step is None or released_step == step):
                return True
        return False

    def locked(self, lab: str) -> bool:
        """Whether the instructor holds ``lab`` back for now (pacing)."""
        return lab in self.refresh()["locked"]
