"""The unified diff of two configs, as YAML, one file header per resource: a revision's ``diff``.

Linear: common leading and trailing lines are trimmed and a middle over `DIFF_MAX_LINES` lines is
shown as removed-then-added instead of being searched for matches; a resource over
`DIFF_MAX_BYTES` as JSON gets a one-line diff. Pure; it must not decide what a change is
(`store_changes`) or touch SQLite (`store`).
"""

from __future__ import annotations

import difflib
import itertools
from typing import Any

import yaml

from meshkit.config.resources import Resource
from meshkit.control.store_documents import Documents
from meshkit.control.store_records import Key, key_ref

DIFF_MAX_LINES = 2000  # a changed middle longer than this is not searched for matching lines
DIFF_MAX_BYTES = 256 * 1024  # a resource larger than this (as JSON) gets a one-line diff
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


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
            chunks.append(f"--- {'a/' + key_ref(key) if before is not None else '/dev/null'}\n"
                          f"+++ {'b/' + key_ref(key) if after is not None else '/dev/null'}\n"
                          f"@@ diff omitted: the resource is {max(sizes)} bytes as JSON "
                          f"(over {DIFF_MAX_BYTES}); `meshkit get` shows it @@\n")
            continue
        chunks.extend(_lines_diff(
            _yaml_lines(old_doc), _yaml_lines(new_doc),
            fromfile=f"a/{key_ref(key)}" if before is not None else "/dev/null",
            tofile=f"b/{key_ref(key)}" if after is not None else "/dev/null",
        ))
    return "".join(chunks)
