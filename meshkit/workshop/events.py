"""The wire format shared by the attendee client and the server, with its checks.

A result event is one ``check()`` outcome: ``{"id", "lab", "step", "passed", "reason", "at"}``, or,
with ``"kind": "solution"``, the record that the learner revealed the step's solution.
``id`` is made by the client once, so a retried delivery is recognised and counted once. Every
check raises `InputError` naming the resource and the field (``results[3].lab: ...``), which the
server answers as a 400 with that text.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

MAX_NAME = 60
MAX_ID = 80          # lab and step ids
MAX_REASON = 2000
MAX_MESSAGE = 1000   # a broadcast
MAX_BATCH = 200      # result events per request
MAX_OUTLINE = 100    # steps announced per lab
EARLIEST = 1_577_836_800.0  # 2020-01-01 UTC: a result checked before that is a clock or unit error

_EVENT_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_EVENT_FIELDS = {"id", "lab", "step", "passed", "reason", "at", "kind"}
EVENT_KINDS = ("check", "solution")


class InputError(ValueError):
    """Bad input: ``where`` names the resource and field, ``problem`` says what is wrong."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ResultEvent:
    """One check result as the attendee's notebook reported it."""

    id: str
    lab: str
    step: str
    passed: bool
    reason: str
    at: float
    kind: str = "check"

    def to_wire(self) -> dict[str, Any]:
        wire = {"id": self.id, "lab": self.lab, "step": self.step, "passed": self.passed,
                "reason": self.reason, "at": self.at}
        return wire if self.kind == "check" else {**wire, "kind": self.kind}


def new_result(lab: str, step: str, passed: bool, reason: str = "", at: float | None = None, *,
               kind: str = "check") -> ResultEvent:
    """A result event with a fresh id, checked as the server will check it."""
    event = {"id": uuid.uuid4().hex, "lab": lab, "step": step, "passed": passed,
             "reason": reason or "", "at": time.time() if at is None else at, "kind": kind}
    return parse_result(event, "result")


def _text(value: object, where: str, *, limit: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InputError(where, f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if not text and not allow_empty:
        raise InputError(where, "must not be empty")
    if len(text) > limit:
        raise InputError(where, f"is {len(text)} characters long; at most {limit} are allowed")
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
        raise InputError(where, "contains control characters")
    return text


def check_name(value: object, where: str = "join.name") -> str:
    """An attendee's display name: 1..60 characters, one line."""
    name = _text(value, where, limit=MAX_NAME)
    if "\n" in name:
        raise InputError(where, "must be one line")
    return name


def check_id(value: object, where: str) -> str:
    """A lab or step id: 1..80 characters, one line."""
    ident = _text(value, where, limit=MAX_ID)
    if "\n" in ident or "\t" in ident:
        raise InputError(where, "must be one line")
    return ident


def check_message(value: object, where: str = "broadcast.text") -> str:
    return _text(value, where, limit=MAX_MESSAGE)


def parse_result(doc: object, where: str) -> ResultEvent:
    """One result event from JSON; unknown fields are refused (e.g. an ``attendee`` field)."""
    if not isinstance(doc, dict):
        raise InputError(where, f"expected an object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - _EVENT_FIELDS)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", "unknown field (the attendee comes from the token)"
                         if unknown[0] in {"attendee", "attendee_id"} else "unknown field")
    event_id = doc.get("id")
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        raise InputError(f"{where}.id", "expected 8..64 characters of A-Z a-z 0-9 _ -")
    passed = doc.get("passed")
    if not isinstance(passed, bool):
        raise InputError(f"{where}.passed", "expected true or false")
    at = doc.get("at", time.time())
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at < 0:
        raise InputError(f"{where}.at", "expected a Unix time in seconds")
    if at < EARLIEST:
        raise InputError(f"{where}.at", f"{at} is before 2020: expected a Unix time in seconds "
                                        "(a clock or unit error, e.g. 0 or milliseconds divided twice)")
    kind = doc.get("kind", "check")
    if kind not in EVENT_KINDS:
        raise InputError(f"{where}.kind", f"expected one of {', '.join(EVENT_KINDS)}")
    return ResultEvent(
        id=event_id,
        lab=check_id(doc.get("lab"), f"{where}.lab"),
        step=check_id(doc.get("step"), f"{where}.step"),
        passed=passed,
        reason=_text(doc.get("reason", ""), f"{where}.reason", limit=MAX_REASON, allow_empty=True),
        at=float(at),
        kind=str(kind),
    )


def parse_results(doc: object) -> list[ResultEvent]:
    """The body of a results upload: ``{"results": [event, ...]}``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise InputError("results", 'expected {"results": [...]}')
    items = doc["results"]
    if len(items) > MAX_BATCH:
        raise InputError("results", f"{len(items)} events in one request; at most {MAX_BATCH}")
    return [parse_result(item, f"results[{index}]") for index, item in enumerate(items)]


def parse_outline(doc: object) -> tuple[str, list[str]]:
    """``{"lab": "02-canary", "steps": ["apply", "converge"]}``: the steps of a lab in order."""
    if not isinstance(doc, dict):
        raise InputError("outline", "expected an object")
    lab = check_id(doc.get("lab"), "outline.lab")
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        raise InputError("outline.steps", "expected a non-empty list of step ids")
    if len(steps) > MAX_OUTLINE:
        raise InputError("outline.steps", f"{len(steps)} steps; at most {MAX_OUTLINE}")
    checked = [check_id(step, f"outline.steps[{index}]") for index, step in enumerate(steps)]
    return lab, list(dict.fromkeys(checked))
