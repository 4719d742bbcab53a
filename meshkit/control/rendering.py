"""Per-proxy snapshots from one compiled template per node shape, serialized once.

Replicas of a workload (nodes that differ only in their instance name) get the same compiled
snapshot but for ``node.id``/``node.instance`` and hence ``version``. Hashing and serializing the
whole document per proxy would cost a millisecond or more each (most of a push to 100 sidecars),
so a `SnapshotTemplate` serializes every top-level part but ``node`` once and assembles each
proxy's canonical JSON from those parts. The version is byte-for-byte what
`meshkit.config.compile.snapshot_version` computes (sha256 over the canonical JSON, sorted keys,
without ``version`` and ``revision``); tests check the result equals ``compile_snapshot``.

A template is built on a worker thread (`meshkit.control.push`), but one ``json.dumps`` call holds
the GIL until it returns: the 4 MB ``outbound`` part of a 1 MB VirtualService's snapshot took
55-90 ms in one call, during which the event loop (pushes, the CA) could not run. So the canonical
JSON of a part is assembled from one call per member down to a few levels (a route, a
cluster), each short (`meshkit.control.jsontext`); the text is the same.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from meshkit.config.registry import Node
from meshkit.control import jsontext

_UNHASHED = ("version", "revision")


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # never changed


def _canonical(value: Any) -> str:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, in short calls."""
    return jsontext.dumps(value, _ENCODER)


_LEADING = ("schema", "version", "revision", "node")  # first on the wire, as in docs/snapshot.md


def _assemble(parts: dict[str, str], order: tuple[str, ...] = ()) -> str:
    """The JSON object whose members are the already-serialized ``parts``: ``order`` first, then sorted."""
    keys = [key for key in order if key in parts] + sorted(key for key in parts if key not in order)
    return "{" + ",".join(f"{json.dumps(key)}:{parts[key]}" for key in keys) + "}"


class SnapshotTemplate:
    """A snapshot compiled for a node shape; ``render(node)`` makes one instance's document."""

    def __init__(self, template: dict[str, Any]) -> None:
        self.template = template
        self._parts = {key: _canonical(value) for key, value in template.items()
                       if key not in _UNHASHED and key != "node"}

    def render(self, node: Node) -> tuple[dict[str, Any], str]:
        """(the snapshot dict, its one-line JSON) for ``node``, with ``version`` set."""
        node_doc = {**self.template["node"], "id": node.id, "instance": node.instance}
        parts = {**self._parts, "node": _canonical(node_doc)}
        version = hashlib.sha256(_assemble(parts).encode("utf-8")).hexdigest()[:16]
        snapshot = {**self.template, "node": node_doc, "version": version}
        parts["version"] = json.dumps(version)
        if "revision" in self.template:
            parts["revision"] = json.dumps(self.template["revision"])
        return snapshot, _assemble(parts, _LEADING)
