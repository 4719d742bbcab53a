"""The versioned config store: the accepted Istio resources, as numbered revisions, in SQLite.

Every accepted change (apply, delete, rollback) is a revision with a number, a timestamp, a
one-line summary and a unified diff of the resources as YAML. A revision row keeps the whole
config as of that revision, so ``rollback(N)`` is a lookup that becomes a NEW revision.

An apply is atomic for a multi-document input: the whole resulting config set (current plus
incoming) goes through ``config.analyze``; any Error rejects the apply and changes nothing.
Deleting is never blocked by the analyzer (its warnings are returned), since removing config
must always be possible.

Store message codes: MK0901-MK0906 (their meanings: `meshkit.config.codes`).

An external source of truth (Kubernetes: ``meshkit control --kubernetes``) keeps the config with
``mirror``: the whole config becomes what the source holds, as one revision whose summary names
the source, not gated by the analyzer (the source already accepted those objects; cross-resource
findings are for its status to show). While a source owns the store (``owned_by``), apply, delete
and rollback are refused with a message saying where to change the config instead.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshkit.config import codes
from meshkit.config.analyze import analyze
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import RegistryView
from meshkit.config.resources import Resource

Key = tuple[str, str, str]  # (kind, namespace, name)


def duplicate_messages(incoming: Sequence[Resource]) -> list[Message]:
    """An MK0901 error for every resource that appears again in the same input."""
    seen: set[Key] = set()
    messages = []
    for resource in incoming:
        if resource.key in seen:
            messages.append(Message(codes.MK0901, Severity.ERROR, resource.ref, "metadata.name",
                                    f"{resource.ref} appears more than once in the same input"))
        seen.add(resource.key)
    return messages


class NotFoundError(ConfigError):
    """A resource or revision that does not exist (HTTP 404)."""


class ConflictError(ConfigError):
    """The store moved on since the caller looked (HTTP 409)."""


def _ref(key: Key) -> str:
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


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """What an apply/delete/rollback did: the revision it made (or the current one when nothing changed)."""

    revision: int
    changed: bool
    actions: list[tuple[str, str]]  # (ref, "created" | "configured" | "unchanged" | "deleted")
    warnings: list[Message] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "changed": self.changed,
            "results": [{"resource": ref, "action": action} for ref, action in self.actions],
            "warnings": [m.to_dict() for m in self.warnings],
        }


def _resource_yaml(resource: Resource | None) -> list[str]:
    if resource is None:
        return []
    return yaml.safe_dump(resource.to_dict(), sort_keys=False).splitlines(keepends=True)


def config_diff(old: dict[Key, Resource], new: dict[Key, Resource]) -> str:
    """Unified diff of every resource that differs, as YAML, one file header per resource."""
    chunks: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before is not None and after is not None and before.to_dict() == after.to_dict():
            continue
        chunks.extend(difflib.unified_diff(
            _resource_yaml(before), _resource_yaml(after),
            fromfile=f"a/{_ref(key)}" if before is not None else "/dev/null",
            tofile=f"b/{_ref(key)}" if after is not None else "/dev/null",
        ))
    return "".join(chunks)


def _errors(messages: Iterable[Message]) -> list[Message]:
    return [m for m in messages if m.severity == Severity.ERROR]


class ConfigStore:
    """The accepted config, its revisions, and change notifications. Not thread-safe: one event loop."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._listeners: list[Callable[[], None]] = []
        self._current: dict[Key, StoredResource] = {}
        self._revision = 0
        self._owner: tuple[str, str] | None = None  # (source, where to change the config instead)
        self._load_latest()

    # -- reading --------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The current revision number (0 before anything was applied)."""
        return self._revision

    def resources(self) -> list[Resource]:
        """The current config, sorted by (kind, namespace, name)."""
        return [self._current[key].resource for key in sorted(self._current)]

    def get(self, kind: str | None = None, namespace: str | None = None,
            name: str | None = None) -> list[StoredResource]:
        """Resources filtered by kind/namespace/name; a named resource that is absent raises NotFound."""
        found = [
            stored for key, stored in sorted(self._current.items())
            if (kind is None or key[0] == kind) and (namespace is None or key[1] == namespace)
            and (name is None or key[2] == name)
        ]
        if name is not None and not found:
            ref = f"{kind or '*'}/{namespace or '*'}/{name}"
            raise NotFoundError([Message(codes.MK0902, Severity.ERROR, ref, "", f"{ref} not found")])
        return found

    def history(self) -> list[Revision]:
        rows = self._db.execute("SELECT number, timestamp, summary, diff FROM revisions ORDER BY number")
        return [Revision(*row) for row in rows]

    def revision_info(self, number: int) -> Revision:
        row = self._db.execute(
            "SELECT number, timestamp, summary, diff FROM revisions WHERE number = ?", (number,)
        ).fetchone()
        if row is None:
            raise self._no_revision(number)
        return Revision(*row)

    # -- notifications --------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after every accepted change; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # -- changing -------------------------------------------------------------------------------

    @property
    def owned_by(self) -> str | None:
        """The external source that owns the config (e.g. ``"kubernetes"``), or None."""
        return None if self._owner is None else self._owner[0]

    def own(self, source: str, advice: str) -> None:
        """Let ``source`` own the config: from now on only ``mirror`` changes it.

        ``advice`` tells a refused caller where to make the change (``"use kubectl apply"``).
        """
        self._owner = (source, advice)

    def mirror(self, desired: Sequence[Resource], *, source: str) -> ChangeResult:
        """Make the config exactly ``desired`` (what an external source holds), as one revision.

        Not gated by the analyzer (the source's own status reports findings). Nothing changes (and
        no revision is made) when the config already is ``desired``.
        """
        duplicates = duplicate_messages(desired)
        if duplicates:
            raise ConfigError(duplicates)
        target = {resource.key: resource for resource in desired}
        current = {key: stored.resource for key, stored in self._current.items()}
        actions = [
            (_ref(key), "deleted" if key not in target else "created" if key not in current else "configured")
            for key in sorted(set(current) | set(target))
            if key not in current or key not in target or current[key].to_dict() != target[key].to_dict()
        ]
        if not actions:
            return ChangeResult(self._revision, False, [])
        self._commit(target, f"{source}: " + ", ".join(f"{action} {ref}" for ref, action in actions))
        return ChangeResult(self._revision, True, actions)

    def analyze(self, incoming: Sequence[Resource] = (),
                registry: RegistryView | None = None) -> list[Message]:
        """What the analyzer says about the current config with ``incoming`` applied over it."""
        merged = self._merged(incoming)
        return analyze([merged[key] for key in sorted(merged)], registry)

    def apply(self, incoming: Sequence[Resource], registry: RegistryView | None = None, *,
              expected_revision: int | None = None) -> ChangeResult:
        """Create or replace ``incoming`` atomically; raise ConfigError (nothing changed) on any Error."""
        self._check_writable()
        self._check_expected(expected_revision)
        duplicates = duplicate_messages(incoming)
        if duplicates:
            raise ConfigError(duplicates)
        merged = self._merged(incoming)
        messages = analyze([merged[key] for key in sorted(merged)], registry)
        if _errors(messages):
            raise ConfigError(messages)
        actions: list[tuple[str, str]] = []
        for resource in incoming:
            before = self._current.get(resource.key)
            if before is None:
                actions.append((resource.ref, "created"))
            elif before.resource.to_dict() != resource.to_dict():
                actions.append((resource.ref, "configured"))
            else:
                actions.append((resource.ref, "unchanged"))
        changed = [(ref, action) for ref, action in actions if action != "unchanged"]
        if not changed:
            return ChangeResult(self._revision, False, actions, messages)
        summary = "apply: " + ", ".join(f"{action} {ref}" for ref, action in changed)
        self._commit(merged, summary)
        return ChangeResult(self._revision, True, actions, messages)

    def delete(self, keys: Sequence[Key], registry: RegistryView | None = None, *,
               expected_revision: int | None = None) -> ChangeResult:
        """Delete every key or nothing (NotFound names all the missing ones)."""
        self._check_writable()
        self._check_expected(expected_revision)
        unique = list(dict.fromkeys(keys))
        missing = [key for key in unique if key not in self._current]
        if missing:
            raise NotFoundError([
                Message(codes.MK0902, Severity.ERROR, _ref(key), "", f"{_ref(key)} not found")
                for key in missing
            ])
        remaining = {key: stored.resource for key, stored in self._current.items() if key not in unique}
        if not unique:
            return ChangeResult(self._revision, False, [], [])
        self._commit(remaining, "delete: " + ", ".join(_ref(key) for key in unique))
        warnings = analyze([remaining[key] for key in sorted(remaining)], registry)
        return ChangeResult(self._revision, True, [(_ref(key), "deleted") for key in unique], warnings)

    def rollback(self, number: int, registry: RegistryView | None = None) -> ChangeResult:
        """Make the config as of revision ``number`` current again, as a new revision."""
        self._check_writable()
        target = self._config_at(number)
        messages = analyze([target[key] for key in sorted(target)], registry)
        if _errors(messages):
            raise ConfigError(messages)
        current = {key: stored.resource for key, stored in self._current.items()}
        if config_diff(current, target) == "":
            return ChangeResult(self._revision, False, [], messages)
        actions = [
            (_ref(key), "deleted" if key not in target else "created" if key not in current else "configured")
            for key in sorted(set(current) | set(target))
            if key not in current or key not in target or current[key].to_dict() != target[key].to_dict()
        ]
        self._commit(target, f"rollback to revision {number}")
        return ChangeResult(self._revision, True, actions, messages)

    # -- internals ------------------------------------------------------------------------------

    def _merged(self, incoming: Sequence[Resource]) -> dict[Key, Resource]:
        merged = {key: stored.resource for key, stored in self._current.items()}
        merged.update((resource.key, resource) for resource in incoming)
        return merged

    def _check_writable(self) -> None:
        if self._owner is not None:
            source, advice = self._owner
            text = f"the config of this control plane is mirrored from {source}; {advice}"
            raise ConflictError([Message(codes.MK0906, Severity.ERROR, "<store>", "", text)])

    def _check_expected(self, expected: int | None) -> None:
        if expected is not None and expected != self._revision:
            text = (f"expected revision {expected} but the store is at revision {self._revision}; "
                    "reload and retry")
            raise ConflictError([Message(codes.MK0904, Severity.ERROR, "<store>", "", text)])

    def _no_revision(self, number: int) -> NotFoundError:
        text = f"revision {number} does not exist (current revision: {self._revision})"
        return NotFoundError([Message(codes.MK0903, Severity.ERROR, f"revision {number}", "", text)])

    def _commit(self, config: dict[Key, Resource], summary: str) -> None:
        """Write ``config`` as the next revision, then make it current and notify listeners."""
        now = time.time()
        number = self._revision + 1
        previous = {key: stored.resource for key, stored in self._current.items()}
        diff = config_diff(previous, config)
        entries: dict[Key, StoredResource] = {}
        for key, resource in config.items():
            before = self._current.get(key)
            if before is not None and before.resource.to_dict() == resource.to_dict():
                entries[key] = before
            else:
                entries[key] = StoredResource(resource, before.created if before else now, number)
        document = json.dumps([
            {"resource": entries[key].resource.to_dict(), "created": entries[key].created,
             "revision": entries[key].revision}
            for key in sorted(entries)
        ])
        self._db.execute(
            "INSERT INTO revisions (number, timestamp, summary, diff, config) VALUES (?, ?, ?, ?, ?)",
            (number, now, summary, diff, document),
        )
        self._current = entries
        self._revision = number
        for listener in list(self._listeners):
            listener()

    def _config_at(self, number: int) -> dict[Key, Resource]:
        if number == 0:
            return {}
        row = self._db.execute("SELECT config FROM revisions WHERE number = ?", (number,)).fetchone()
        if row is None:
            raise self._no_revision(number)
        return {stored.resource.key: stored.resource for stored in self._decode(row[0], number)}

    @staticmethod
    def _decode(document: str, number: int) -> list[StoredResource]:
        try:
            entries = json.loads(document)
            resources = load_resources([entry["resource"] for entry in entries], origin=f"revision {number}")
        except (ValueError, KeyError, TypeError, ConfigError) as error:
            text = f"stored config of revision {number} cannot be read: {error}"
            message = Message(codes.MK0905, Severity.ERROR, f"revision {number}", "", text)
            raise ConfigError([message]) from error
        return [StoredResource(resource, float(entry["created"]), int(entry["revision"]))
                for resource, entry in zip(resources, entries, strict=True)]

    def _load_latest(self) -> None:
        row = self._db.execute("SELECT number, config FROM revisions ORDER BY number DESC LIMIT 1").fetchone()
        if row is None:
            return
        number, document = row
        self._current = {stored.resource.key: stored for stored in self._decode(document, number)}
        self._revision = number
