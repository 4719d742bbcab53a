"""The versioned config store: the accepted Istio resources, as numbered revisions, in SQLite.

Every accepted change (apply, delete, rollback) is a revision with a number, a timestamp, a
one-line summary and a unified diff of the resources as YAML. A revision row keeps the whole
config as of that revision, so ``rollback(N)`` is a lookup that becomes a NEW revision.

An apply is atomic for a multi-document input: the whole resulting config set (current plus
incoming) goes through ``config.analyze``; any Error rejects the apply and changes nothing.
Deleting is never blocked by the analyzer (its warnings are returned), since removing config
must always be possible.

Store message codes: MK0901-MK0906 (their meanings: `meshkit.config.codes`).

Bounded work: a change is *prepared* (`prepare_apply`, `prepare_delete`, `prepare_rollback`:
analyzer, diff, serialization; pure, safe in a worker thread) and then *committed* (`commit`:
one INSERT, on the caller's thread; it refuses a preparation the store moved past). The diff is
linear: common leading and trailing lines are trimmed and a middle over `DIFF_MAX_LINES` lines
is shown as removed-then-added instead of being searched for matches. Only the last
``keep_revisions`` revisions are kept (default `KEEP_REVISIONS`); older ones are pruned, and
rolling back to one says so.

An external source of truth (Kubernetes: ``meshkit control --kubernetes``) keeps the config with
``mirror``: the whole config becomes what the source holds, as one revision whose summary names
the source, not gated by the analyzer (the source already accepted those objects; cross-resource
findings are for its status to show). While a source owns the store (``owned_by``), apply, delete
and rollback are refused with a message saying where to change the config instead.

The store is this module's `ConfigStore` (the current config, the revisions in SQLite, the
notifications); the records are `store_records`, the documents memo `store_documents`, the diff
`config_diff` and a change's preparation `store_changes`. Importers use this module, which
re-exports the names they had here. It must not decide what a rule means (that is `config`).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from meshkit.config import codes
from meshkit.config.analyze import analyze
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import RegistryView
from meshkit.config.resources import Resource
from meshkit.control.config_diff import DIFF_MAX_BYTES, DIFF_MAX_LINES, config_diff
from meshkit.control.release import Release, release_at_once
from meshkit.control.store_changes import (
    KEPT_NAMESPACES,
    duplicate_messages,
    prepare_apply_to,
    prepare_config,
    refuse_kept_namespaces,
    refusing_errors,
    with_namespace_contents,
)
from meshkit.control.store_documents import Documents
from meshkit.control.store_records import (
    ANSWER_ENCODER,
    ChangeResult,
    ConflictError,
    Key,
    NotFoundError,
    PreparedChange,
    Revision,
    StoredResource,
    encode_messages,
    key_ref,
)

__all__ = [
    "ANSWER_ENCODER",
    "DIFF_MAX_BYTES",
    "DIFF_MAX_LINES",
    "KEEP_REVISIONS",
    "KEPT_NAMESPACES",
    "ChangeResult",
    "ConfigStore",
    "ConflictError",
    "Documents",
    "Key",
    "NotFoundError",
    "PreparedChange",
    "Revision",
    "StoredResource",
    "config_diff",
    "duplicate_messages",
    "encode_messages",
    "prepare_apply_to",
]

KEEP_REVISIONS = 1000


class ConfigStore:
    """The accepted config, its revisions, and change notifications.

    Not thread-safe: every method runs on one thread (the event loop), except the ``prepare_*``
    methods, which only read and may run in a worker thread while the loop goes on.
    """

    def __init__(self, connection: sqlite3.Connection, *, keep_revisions: int = KEEP_REVISIONS,
                 release: Release = release_at_once) -> None:
        """``release`` takes the objects a commit retires (the old config and its documents; the
        list is its to empty) with the old config's size, e.g.
        `meshkit.control.release.GradualRelease.put`: freeing a large config at once holds the
        loop for tens of milliseconds."""
        if keep_revisions < 1:
            raise ValueError(f"keep_revisions: expected at least 1, got {keep_revisions}")
        self.keep_revisions = keep_revisions
        self._db = connection
        self._release = release
        self._listeners: list[Callable[[], None]] = []
        self._current: dict[Key, StoredResource] = {}
        self._revision = 0
        self._docs = Documents()
        self._token = uuid.uuid4().hex
        self._document = "[]"
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
            (key_ref(key),
             "deleted" if key not in target else "created" if key not in current else "configured")
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
        return self.commit(self.prepare_apply(incoming, registry, expected_revision=expected_revision))

    def prepare_apply(self, incoming: Sequence[Resource], registry: RegistryView | None = None, *,
                      expected_revision: int | None = None) -> PreparedChange | ChangeResult:
        """`apply`'s work without the commit: a ChangeResult when nothing changes."""
        base, current, docs = self._revision, self._current, self._docs.copy()
        self.check_writable(expected_revision)
        return prepare_apply_to(base, current, incoming, registry, docs)

    def check_writable(self, expected_revision: int | None = None) -> None:
        """Raise ConflictError when a source owns the config or it is not at ``expected_revision``."""
        self._check_writable()
        self._check_expected(expected_revision)

    @property
    def state(self) -> tuple[int, str, str]:
        """(revision, token, document): the current config as its revision's stored JSON and the
        token naming it (for a worker process that prepares changes away from this store)."""
        return self._revision, self._token, self._document

    def delete(self, keys: Sequence[Key], registry: RegistryView | None = None, *,
               expected_revision: int | None = None) -> ChangeResult:
        """Delete every key or nothing (NotFound names all the missing ones)."""
        return self.commit(self.prepare_delete(keys, registry, expected_revision=expected_revision))

    def prepare_delete(self, keys: Sequence[Key], registry: RegistryView | None = None, *,
                       expected_revision: int | None = None) -> PreparedChange | ChangeResult:
        base, current = self._revision, self._current
        self._check_writable()
        self._check_expected(expected_revision)
        unique = list(dict.fromkeys(keys))
        refuse_kept_namespaces(unique)
        missing = [key for key in unique if key not in current]
        if missing:
            raise NotFoundError([
                Message(codes.MK0902, Severity.ERROR, key_ref(key), "", f"{key_ref(key)} not found")
                for key in missing
            ])
        unique = with_namespace_contents(unique, current)
        remaining = {key: stored.resource for key, stored in current.items() if key not in unique}
        if not unique:
            return ChangeResult(base, False, [], [])
        warnings = analyze([remaining[key] for key in sorted(remaining)], registry)
        return prepare_config(base, current, remaining,
                              "delete: " + ", ".join(key_ref(key) for key in unique),
                              actions=[(key_ref(key), "deleted") for key in unique], messages=warnings,
                              docs=self._docs.copy())

    def rollback(self, number: int, registry: RegistryView | None = None) -> ChangeResult:
        """Make the config as of revision ``number`` current again, as a new revision."""
        return self.commit(self.prepare_rollback(number, self.config_at(number), registry))

    def config_at(self, number: int) -> dict[Key, Resource]:
        """The config as of revision ``number`` (a database read: on the store's thread)."""
        self._check_writable()
        return self._config_at(number)

    def prepare_rollback(self, number: int, target: dict[Key, Resource],
                         registry: RegistryView | None = None) -> PreparedChange | ChangeResult:
        base, stored = self._revision, self._current
        self._check_writable()
        messages = analyze([target[key] for key in sorted(target)], registry)
        if refusing_errors(messages):
            raise ConfigError(messages)
        current = {key: entry.resource for key, entry in stored.items()}
        docs = self._docs.copy()
        actions = [
            (key_ref(key),
             "deleted" if key not in target else "created" if key not in current else "configured")
            for key in sorted(set(current) | set(target))
            if key not in current or key not in target or docs(current[key]) != docs(target[key])
        ]
        if not actions:
            return ChangeResult(base, False, [], messages)
        return prepare_config(base, stored, target, f"rollback to revision {number}", actions=actions,
                        messages=messages, docs=docs)

    def commit(self, change: PreparedChange | ChangeResult) -> ChangeResult:
        """Make a prepared change the next revision (a ChangeResult passes through unchanged)."""
        if isinstance(change, ChangeResult):
            return change
        self._check_writable()
        if change.base != self._revision:
            text = (f"the config changed (revision {self._revision}) while this change was prepared "
                    f"against revision {change.base}; retry")
            raise ConflictError([Message(codes.MK0904, Severity.ERROR, "<store>", "", text)])
        if change.fresh:
            raise ValueError("a change whose body's resources are left out (fresh) cannot be committed")
        if change.kept:  # prepared in a worker process: the unchanged entries are this store's own
            entries = {key: self._current[key] for key in change.kept}
            entries.update(change.entries)
            change = dataclasses.replace(change, entries=entries, kept=())
        self._commit_prepared(change)
        return ChangeResult(self._revision, True, change.actions, change.messages, change.encoded_messages)

    # -- internals ------------------------------------------------------------------------------

    def _merged(self, incoming: Sequence[Resource]) -> dict[Key, Resource]:
        merged = {key: stored.resource for key, stored in self._current.items()}
        merged.update((resource.key, resource) for resource in incoming)
        return merged

    def _commit_prepared(self, change: PreparedChange) -> None:
        number = change.base + 1
        self._db.execute(
            "INSERT INTO revisions (number, timestamp, summary, diff, config) VALUES (?, ?, ?, ?, ?)",
            (number, change.timestamp, change.summary, change.diff, change.document),
        )
        self._db.execute("DELETE FROM revisions WHERE number <= ?", (number - self.keep_revisions,))
        retired: list[Any] = [self._current, self._docs]
        size = len(self._document)  # the old config's JSON
        self._current = change.entries
        self._revision = number
        self._docs = change.docs if change.docs is not None else Documents()
        self._token = change.token or uuid.uuid4().hex
        self._document = change.document
        self._release(retired, size)
        for listener in list(self._listeners):
            listener()

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
        oldest = self._db.execute("SELECT MIN(number) FROM revisions").fetchone()[0]
        if oldest is not None and 0 < number < oldest:
            text = (f"revision {number} was pruned: the control plane keeps the last {self.keep_revisions} "
                    f"revisions ({oldest}..{self._revision}); roll back to one of those")
        return NotFoundError([Message(codes.MK0903, Severity.ERROR, f"revision {number}", "", text)])

    def _commit(self, config: dict[Key, Resource], summary: str) -> None:
        """Write ``config`` as the next revision, then make it current and notify listeners."""
        self._commit_prepared(prepare_config(self._revision, self._current, config, summary, actions=[],
                                       messages=[], docs=self._docs.copy()))

    def _config_at(self, number: int) -> dict[Key, Resource]:
        if number == 0:
            return {}
        row = self._db.execute("SELECT config FROM revisions WHERE number = ?", (number,)).fetchone()
        if row is None:
            raise self._no_revision(number)
        return {stored.resource.key: stored.resource for stored in self.decode(row[0], number)}

    @staticmethod
    def decode(document: str, number: int) -> list[StoredResource]:
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
        self._current = {stored.resource.key: stored for stored in self.decode(document, number)}
        self._revision = number
        self._document = document
