"""Taking part in a workshop from a notebook: `join()`, `instructor()` and wiring a `Lab` to the room.

A joined learner's labs report every check result to the instructor's server, unlock solutions as
the instructor releases them, and show the instructor's broadcasts (each once per learner, across
labs: the ids shown are kept in the attendee's state dir) — through the seams `Lab` has
(`on_check`, `solution_lock`) and `meshkit.workshop.client`, which queues and retries on its own.
Nothing changes for a learner who never joined (no workshop identity in $MESHKIT_HOME and no
``MESHKIT_WORKSHOP_URL``). It must not block a cell for long nor raise for network trouble.
"""

from __future__ import annotations

import html
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshkit.lab.display import LabError
from meshkit.workshop import client, events

__all__ = [
    "NOT_OPEN_YET",
    "RELEASE_LATER",
    "Room",
    "attach",
    "attendee",
    "instructor",
    "join",
]

if TYPE_CHECKING:
    from meshkit.lab.steps import CheckResult, Lab, Step

RELEASE_LATER = "The instructor will release this solution during the workshop."
NOT_OPEN_YET = "The instructor has not opened this lab yet — you can read ahead."
SHOWN_FILE = "broadcasts-shown.json"
WATCH_EVERY = 3.0        # seconds between polls for new broadcasts while a progress widget is shown
WATCH_MAX = 4 * 3600.0   # a watcher stops after a workshop day


def join(url: str, code: str, name: str) -> client.Attendee:
    """Join the workshop at ``url`` with the room's ``code`` as ``name`` (kept for every notebook)."""
    try:
        return client.join(url, code, name)
    except (client.WorkshopError, events.InputError) as exc:
        raise LabError(f"could not join the workshop at {url}: {exc}") from None


def instructor(on: bool = True) -> None:
    """Instructor mode for this kernel: every solution shows, whatever the workshop server says."""
    os.environ["MESHKIT_INSTRUCTOR"] = "1" if on else "0"


def attendee() -> client.Attendee | None:
    try:
        return client.joined() or client.join_from_env()
    except (client.WorkshopError, events.InputError, OSError) as exc:
        print(f"meshkit.lab: not reporting to the workshop ({exc})")
        return None


class Room:
    """One lab's link to the workshop: reports results, locks solutions, shows new broadcasts once."""

    def __init__(self, lab: Lab, who: client.Attendee) -> None:
        self.lab = lab
        self.who = who
        self.seen_file = Path(who.state_dir) / SHOWN_FILE  # shared by every lab of this learner
        self._watching: threading.Event | None = None

    @property
    def shown(self) -> set[Any]:
        """Broadcast ids already shown to this learner, in any lab (an old one is not news later)."""
        try:
            ids = json.loads(self.seen_file.read_text())
        except (FileNotFoundError, ValueError):
            return set()
        return set(ids) if isinstance(ids, list) else set()

    def _mark_shown(self, ids: set[Any]) -> None:
        tmp = self.seen_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(ids, key=str)))
        os.replace(tmp, self.seen_file)

    def report(self, result: CheckResult) -> None:
        self.outline()
        self.who.report(result.lab, result.step, result.passed, result.reason, at=result.at)
        for text in self.new_messages():
            print(f"Instructor: {text}")

    def solution_seen(self, step: Step) -> None:
        """Tell the instructor that this learner revealed ``step``'s solution (the dashboard marks it)."""
        self.who.report(self.lab.name, step.id, False, at=None, kind="solution")

    def outline(self) -> None:
        self.who.outline(self.lab.name, list(self.lab.steps))

    def lock(self, step: Step) -> str | None:
        return None if self.who.released(self.lab.name, step.id) else RELEASE_LATER

    def new_messages(self) -> list[str]:
        shown = self.shown
        fresh = [m for m in self.who.messages() if m.get("id") not in shown]
        if fresh:
            self._mark_shown(shown | {m.get("id") for m in fresh})
        return [str(m.get("text", "")) for m in fresh]

    def banner_html(self) -> str:
        lines = [NOT_OPEN_YET] if self.who.locked(self.lab.name) else []
        lines += [f"Instructor: {text}" for text in self.new_messages()]
        return "".join(_banner_line(t) for t in lines)

    def watch(self, banner: Any, every: float = WATCH_EVERY,
              max_seconds: float = WATCH_MAX) -> threading.Event:
        """Push new broadcasts into the ``banner`` widget as they arrive, without the learner running
        a cell: a daemon thread polls the server every ``every`` s for at most ``max_seconds``.
        Returns the event that stops it (a later `watch` stops the earlier one)."""
        if self._watching is not None:
            self._watching.set()
        stop = threading.Event()
        self._watching = stop

        def poll() -> None:
            deadline = time.monotonic() + max_seconds
            while not stop.wait(every) and time.monotonic() < deadline:
                try:
                    self.who.refresh(max_age=every / 2)
                    fresh = self.new_messages()
                except Exception as exc:  # a network hiccup must not kill the watcher
                    self.who.last_error = str(exc)
                    continue
                if fresh:
                    banner.value += "".join(_banner_line(f"Instructor: {text}") for text in fresh)

        threading.Thread(target=poll, name=f"meshkit-broadcasts-{self.lab.name}", daemon=True).start()
        return stop


def _banner_line(text: str) -> str:
    return f'<div style="background:#fff6d5;padding:4px 8px">{html.escape(text)}</div>'


def attach(lab: Lab) -> Room | None:
    """Wire ``lab`` to the workshop this learner joined, if any."""
    who = attendee()
    if who is None:
        return None
    room = Room(lab, who)
    lab.on_check(room.report)
    lab.solution_lock = room.lock
    return room
