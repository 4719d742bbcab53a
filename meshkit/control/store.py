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
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshkit.config import codes
from meshkit.config.analyze import analyze
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import RegistryView
from meshkit.config.resources import Resource
from meshkit.control import jsontext
from meshkit.control.release import Release, release_at_once

Key = tuple[str, str, str]  # (kind, namespace, name)
KEEP_REVISIONS = 1000
DIFF_MAX_LINES = 2000  # a changed middle longer than this is not searched for matching lines
DIFF_MAX_BYTES = 256 * 1024  # a resource larger than this (as JSON) gets a one-line diff
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


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


ANSWER_ENCODER = json.JSONEncoder()  # what web.json_response's json.dumps writes; never changed
_DUMPS_ENCODER = json.JSONEncoder()  # json.dumps's own settings; never changed


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


class Documents:
    """Each resource's ``to_dict()`` and its JSON computed once (a 1 MB resource takes ~0.1 s per
    dump); the store keeps those of its current resources, so a change dumps only what it brings."""

    def __init__(self, docs: dict[int, tuple[Resource, dict[str, Any]]] | None = None,
                 texts: dict[int, tuple[Resource, str]] | None = None) -> None:
        self._docs: dict[int, tuple[Resource, dict[str, Any]]] = dict(docs or {})
        self._texts: dict[int, tuple[Resource, str]] = dict(texts or {})

    def copy(self) -> Documents:
        return Documents(self._docs, self._texts)

    def only(self, resources: Iterable[Resource]) -> Documents:
        """The documents of ``resources`` already computed (the others are dropped)."""
        ids = {id(r) for r in resources}
        return Documents({i: d for i, d in self._docs.items() if i in ids},
                         {i: t for i, t in self._texts.items() if i in ids})

    def __call__(self, resource: Resource) -> dict[str, Any]:
        found = self._docs.get(id(resource))
        if found is None:
            found = self._docs[id(resource)] = (resource, resource.to_dict())  # keeps the id taken
        return found[1]

    def json(self, resource: Resource) -> str:
        """``json.dumps(self(resource))``, computed once, in short encoder calls (`jsontext`: a change
        prepared on a thread shares the GIL with the loop; one call held it 25-80 ms for 1 MB)."""
        found = self._texts.get(id(resource))
        if found is None:
            # the resource, its spec, a list in it (a VirtualService's http): the list in runs
            found = self._texts[id(resource)] = (resource, jsontext.dumps(self(resource), _DUMPS_ENCODER, 3))
        return found[1]


def _yaml_lines(doc: dict[str, Any] | None) -> list[str]:
    if doc is None:
        return []
    text: str = yaml.dump(doc, Dumper=_DUMPER, sort_keys=False)
    return text.splitlines(keepends=True)


def _lines_diff(before: list[str], after: list[str], fromfile: str, tofile: str) -> list[str]:
    """A unified diff in linear time when the changed middle is large (see the module docstring)."""
    start = 0
    for start, (a, b) in enumerate(itertools.zip_longest(before, after)):  # noqa: B007
        if a != b:
            break
    else:
        return []
    end_b, end_a = len(before), len(after)
    while end_b > start and end_a > start and before[end_b - 1] == after[end_a - 1]:
        end_b, end_a = end_b - 1, end_a - 1
    if max(end_b - start, end_a - start) <= DIFF_MAX_LINES:
        return list(difflib.unified_diff(before, after, fromfile=fromfile, tofile=tofile))
    context = 3
    low, high_b, high_a = max(0, start - context), min(len(before), end_b + context), \
        min(len(after), end_a + context)
    hunk = [f"--- {fromfile}\n", f"+++ {tofile}\n",
            f"@@ -{low + 1},{high_b - low} +{low + 1},{high_a - low} @@\n"]
    hunk.extend(" " + line for line in before[low:start])
    hunk.extend("-" + line for line in before[start:end_b])
    hunk.extend("+" + line for line in after[start:end_a])
    hunk.extend(" " + line for line in before[end_b:high_b])
    return [line if line.endswith("\n") else line + "\n" for line in hunk]


def config_diff(old: dict[Key, Resource], new: dict[Key, Resource], docs: Documents | None = None) -> str:
    """Unified diff of every resource that differs, as YAML, one file header per resource."""
    docs = docs or Documents()
    chunks: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before is after:
            continue
        old_doc = docs(before) if before is not None else None
        new_doc = docs(after) if after is not None else None
        if old_doc is not None and old_doc == new_doc:
            continue
        sizes = [len(docs.json(r)) for r in (before, after) if r is not None]
        if max(sizes) > DIFF_MAX_BYTES:
            chunks.append(f"--- {'a/' + _ref(key) if before is not None else '/dev/null'}\n"
                          f"+++ {'b/' + _ref(key) if after is not None else '/dev/null'}\n"
                          f"@@ diff omitted: the resource is {max(sizes)} bytes as JSON "
                          f"(over {DIFF_MAX_BYTES}); `meshkit get` shows it @@\n")
            continue
        chunks.extend(_lines_diff(
            _yaml_lines(old_doc), _yaml_lines(new_doc),
            fromfile=f"a/{_ref(key)}" if before is not None else "/dev/null",
            tofile=f"b/{_ref(key)}" if after is not None else "/dev/null",
        ))
    return "".join(chunks)


def _errors(messages: Iterable[Message]) -> list[Message]:
    """The messages that refuse a change: every Error but those Istio's API server accepts
    (`codes.REPORTED_NOT_REFUSED`, returned with the change's warnings)."""
    return [m for m in messages if m.severity == Severity.ERROR and m.code not in codes.REPORTED_NOT_REFUSED]


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


def prepare_apply_to(base: int, current: dict[Key, StoredResource], incoming: Sequence[Resource],
                     registry: RegistryView | None, docs: Documents | None = None
                     ) -> PreparedChange | ChangeResult:
    """`ConfigStore.prepare_apply` over ``current`` at revision ``base`` (pure: any thread or process)."""
    duplicates = duplicate_messages(incoming)
    if duplicates:
        raise ConfigError(duplicates)
    merged = {key: stored.resource for key, stored in current.items()}
    merged.update((resource.key, resource) for resource in incoming)
    messages = analyze([merged[key] for key in sorted(merged)], registry)
    if _errors(messages):
        raise ConfigError(messages)
    actions: list[tuple[str, str]] = []
    docs = docs or Documents()
    for resource in incoming:
        before = current.get(resource.key)
        if before is None:
            actions.append((resource.ref, "created"))
        elif docs(before.resource) != docs(resource):
            actions.append((resource.ref, "configured"))
        else:
            actions.append((resource.ref, "unchanged"))
    changed = [(ref, action) for ref, action in actions if action != "unchanged"]
    if not changed:
        return ChangeResult(base, False, actions, messages)
    summary = "apply: " + ", ".join(f"{action} {ref}" for ref, action in changed)
    return _prepare(base, current, merged, summary, actions=actions, messages=messages, docs=docs)


def _prepare(base: int, current: dict[Key, StoredResource], config: dict[Key, Resource], summary: str,
             *, actions: list[tuple[str, str]], messages: list[Message],
             docs: Documents | None = None) -> PreparedChange:
    """Diff and serialize ``config`` as revision ``base + 1`` (pure: a worker may run it)."""
    docs = docs or Documents()
    now = time.time()
    number = base + 1
    previous = {key: stored.resource for key, stored in current.items()}
    diff = config_diff(previous, config, docs)
    entries: dict[Key, StoredResource] = {}
    for key, resource in config.items():
        before = current.get(key)
        unchanged = before is not None and (before.resource is resource
                                            or docs(before.resource) == docs(resource))
        if before is not None and unchanged:
            entries[key] = before
        else:
            entries[key] = StoredResource(resource, before.created if before else now, number)
    document = "[" + ", ".join(  # json.dumps of the list, reusing each resource's JSON
        f'{{"resource": {docs.json(entries[key].resource)}, "created": {json.dumps(entries[key].created)}, '
        f'"revision": {entries[key].revision}}}'
        for key in sorted(entries)
    ) + "]"
    docs = docs.only(stored.resource for stored in entries.values())
    return PreparedChange(base, summary, actions, messages, entries, diff, document, now,
                          token=uuid.uuid4().hex, docs=docs)


KEPT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")  # Kubernetes refuses these


def _refuse_kept_namespaces(keys: list[Key]) -> None:
    kept = [key for key in keys if key[0] == "Namespace" and key[2] in KEPT_NAMESPACES]
    if kept:
        raise ConfigError([Message(codes.MK0907, Severity.ERROR, _ref(key), "metadata.name",
                                   f'namespaces "{key[2]}" is forbidden: this namespace may not be deleted')
                           for key in kept])


def _with_namespace_contents(keys: list[Key], current: Mapping[Key, object]) -> list[Key]:
    """``keys`` and, after each Namespace among them, everything stored in that namespace: deleting
    a namespace deletes what it holds, as on Kubernetes (Istio's clean-up is ``kubectl delete ns foo``)."""
    doomed = {key[2] for key in keys if key[0] == "Namespace"}
    if not doomed:
        return keys
    contents = [key for key in sorted(current) if key[1] in doomed and key[0] != "Namespace"]
    return list(dict.fromkeys([*keys, *contents]))


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
        _refuse_kept_namespaces(unique)
        missing = [key for key in unique if key not in current]
        if missing:
            raise NotFoundError([
                Message(codes.MK0902, Severity.ERROR, _ref(key), "", f"{_ref(key)} not found")
                for key in missing
            ])
        unique = _with_namespace_contents(unique, current)
        remaining = {key: stored.resource for key, stored in current.items() if key not in unique}
        if not unique:
            return ChangeResult(base, False, [], [])
        warnings = analyze([remaining[key] for key in sorted(remaining)], registry)
        return _prepare(base, current, remaining, "delete: " + ", ".join(_ref(key) for key in unique),
                        actions=[(_ref(key), "deleted") for key in unique], messages=warnings,
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
        if _errors(messages):
            raise ConfigError(messages)
        current = {key: entry.resource for key, entry in stored.items()}
        docs = self._docs.copy()
        actions = [
            (_ref(key), "deleted" if key not in target else "created" if key not in current else "configured")
            for key in sorted(set(current) | set(target))
            if key not in current or key not in target or docs(current[key]) != docs(target[key])
        ]
        if not actions:
            return ChangeResult(base, False, [], messages)
        return _prepare(base, stored, target, f"rollback to revision {number}", actions=actions,
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
        self._commit_prepared(_prepare(self._revision, self._current, config, summary, actions=[],
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
