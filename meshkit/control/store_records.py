"""The config store's records: what a change is and what it did, and how an answer encodes them.

`Key`, `Revision`, `StoredResource`, `PreparedChange` (a change worked out, ready to commit),
`ChangeResult` (what a change did, and its answer's JSON text: `ANSWER_ENCODER`,
`encode_messages`), and the store's errors `NotFoundError` and `ConflictError`.

`StoredResource`, `PreparedChange`, `ChangeResult` and the errors cross the boundary to the
control plane's worker process by pickle (`meshkit.control.preparation`): they stay top-level
classes of this module, which imports nothing that opens a database, a socket or a loop. It must not
hold state, prepare or commit a change (`store_changes`, `store`) or touch SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from meshkit.config.messages import ConfigError, Message
from meshkit.config.resources import Resource
from meshkit.control.store_documents import Documents

Key = tuple[str, str, str]  # (kind, namespace, name)


class NotFoundError(ConfigError):
    """A resource or revision that does not exist (HTTP 404)."""


class ConflictError(ConfigError):
    """The store moved on since the caller looked (HTTP 409)."""


def key_ref(key: Key) -> str:
    """``kind/namespace/name``."""
    return "/".join(key)


@dataclass(frozen=True, slots=True)
class Revision:
    """One accepted change."""

    number: int
    timestamp: float
    summary: str
    diff: str

    def to_dict(self, *, with_diff: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {"revision": self.number, "timestamp": self.timestamp, "summary": self.summary}
        if with_diff:
            doc["diff"] = self.diff
        return doc


@dataclass(frozen=True, slots=True)
class StoredResource:
    """A resource with what the store knows about it: when it was created, which revision last changed it."""

    resource: Resource
    created: float
    revision: int

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.resource.ref, "created": self.created, "revision": self.revision,
                "resource": self.resource.to_dict()}


ANSWER_ENCODER = json.JSONEncoder()  # what web.json_response's json.dumps writes; never changed


def encode_messages(messages: Sequence[Message]) -> str:
    """``messages`` as a change's answer lists them (``ANSWER_ENCODER``'s JSON array text)."""
    return ANSWER_ENCODER.encode([m.to_dict() for m in messages])


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """What an apply/delete/rollback did: the revision it made (or the current one when nothing changed)."""

    revision: int
    changed: bool
    actions: list[tuple[str, str]]  # (ref, "created" | "configured" | "unchanged" | "deleted")
    warnings: list[Message] = field(default_factory=list)
    # more warnings, after ``warnings``, already as JSON text (`encode_messages`): those a worker
    # process encoded, where 8,000 of them cost it 70-110 ms instead of the control plane
    encoded_warnings: str | None = None

    def to_dict(self) -> dict[str, Any]:
        warnings = [m.to_dict() for m in self.warnings]
        if self.encoded_warnings is not None:
            warnings.extend(json.loads(self.encoded_warnings))
        return {**self._head(), "warnings": warnings}

    def answer(self) -> str:
        """``ANSWER_ENCODER.encode(self.to_dict())``, with the encoded warnings spliced in as they are."""
        if self.encoded_warnings is None:
            return ANSWER_ENCODER.encode(self.to_dict())
        head = ANSWER_ENCODER.encode({**self._head(), "warnings": []})[:-3]  # "warnings" is the last member
        listed, encoded = encode_messages(self.warnings), self.encoded_warnings
        if listed == "[]" or encoded == "[]":
            return f"{head}{encoded if listed == '[]' else listed}}}"
        return f"{head}{listed[:-1]}, {encoded[1:]}}}"

    def _head(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "changed": self.changed,
            "results": [{"resource": ref, "action": action} for ref, action in self.actions],
        }


@dataclass(frozen=True, slots=True)
class PreparedChange:
    """A change worked out against revision ``base``, ready to `ConfigStore.commit`."""

    base: int
    summary: str
    actions: list[tuple[str, str]]
    messages: list[Message]
    entries: dict[Key, StoredResource]
    diff: str
    document: str
    timestamp: float
    token: str = ""  # names the config this change makes (a worker process caches it by this name)
    kept: tuple[Key, ...] = ()  # entries left out of ``entries``: the base revision's own, unchanged
    # entries left out of ``entries``: the applied body's own resources, (key, created) at revision
    # base + 1, which the control plane parsed itself (`meshkit.control.preparation.with_parsed`)
    fresh: tuple[tuple[Key, float], ...] = ()
    docs: Documents | None = field(default=None, compare=False)  # to_dict() memo (never pickled)
    encoded_messages: str | None = None  # more messages, after ``messages``: `ChangeResult.encoded_warnings`
