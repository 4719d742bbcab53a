"""A config change worked out, pure and away from the store: the analyzer, the actions, the diff.

`prepare_apply_to` (an apply over a given revision's config: any thread or the worker process),
`prepare_config` (a whole config as the next revision: its diff, entries and stored JSON), and
the rules of a change: duplicates in one input (MK0901), the Errors that refuse it
(`refusing_errors`), the namespaces that may not be deleted (MK0907) and what deleting a
namespace takes with it. It must not hold the store's state, write the database or commit
(`store.ConfigStore` does).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence

from meshkit.config import codes
from meshkit.config.analyze import analyze
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import RegistryView
from meshkit.config.resources import Resource
from meshkit.control.config_diff import config_diff
from meshkit.control.store_documents import Documents
from meshkit.control.store_records import ChangeResult, Key, PreparedChange, StoredResource, key_ref


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


def refusing_errors(messages: Iterable[Message]) -> list[Message]:
    """The messages that refuse a change: every Error but those Istio's API server accepts
    (`codes.REPORTED_NOT_REFUSED`, returned with the change's warnings)."""
    return [m for m in messages if m.severity == Severity.ERROR and m.code not in codes.REPORTED_NOT_REFUSED]


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
    if refusing_errors(messages):
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
    return prepare_config(base, current, merged, summary, actions=actions, messages=messages, docs=docs)


def prepare_config(base: int, current: dict[Key, StoredResource], config: dict[Key, Resource], summary: str,
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


def refuse_kept_namespaces(keys: list[Key]) -> None:
    kept = [key for key in keys if key[0] == "Namespace" and key[2] in KEPT_NAMESPACES]
    if kept:
        raise ConfigError([Message(codes.MK0907, Severity.ERROR, key_ref(key), "metadata.name",
                                   f'namespaces "{key[2]}" is forbidden: this namespace may not be deleted')
                           for key in kept])


def with_namespace_contents(keys: list[Key], current: Mapping[Key, object]) -> list[Key]:
    """``keys`` and, after each Namespace among them, everything stored in that namespace: deleting
    a namespace deletes what it holds, as on Kubernetes (Istio's clean-up is ``kubectl delete ns foo``)."""
    doomed = {key[2] for key in keys if key[0] == "Namespace"}
    if not doomed:
        return keys
    contents = [key for key in sorted(current) if key[1] in doomed and key[0] != "Namespace"]
    return list(dict.fromkeys([*keys, *contents]))
