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

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshkit.config.compile import compile_snapshot
from meshkit.config.registry import Node, RegistryView
from meshkit.config.resources import Resource
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


def sse(event: str, data: str) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {data}\n\n".encode()


@dataclass(frozen=True, slots=True)
class CompileInputs:
    """What a proxy's snapshot depends on besides the config, its revision and the proxy's node
    (picklable: the worker process compiles with them too, see `meshkit.control.preparation`)."""

    view: RegistryView
    trace_sampling: float  # meshConfig.defaultConfig.tracing.sampling (percent)
    jwks_keys: dict[str, str | None] | None  # fetched jwksUri key sets (`meshkit.control.jwks`)
    jwks_errors: dict[str, str] | None

    def same_as(self, other: CompileInputs) -> bool:
        """Equal inputs; the registry view compared by identity (a registry change makes a new view)."""
        return (self.view is other.view and self.trace_sampling == other.trace_sampling
                and self.jwks_keys == other.jwks_keys and self.jwks_errors == other.jwks_errors)


Rendered = list[tuple[dict[str, Any], bytes]]  # per node of a shape: (its snapshot, its SSE event)


def compile_rendered(resources: Sequence[Resource], revision: int, inputs: CompileInputs,
                     nodes: Sequence[Node]) -> Rendered:
    """The snapshot and SSE event of each of ``nodes`` (one shape: they differ only in their instance
    name), compiled once and rendered per node. Pure: the push server's threads and the worker
    process both call it, so a snapshot is the same bytes whichever compiled it."""
    view = inputs.view
    template = SnapshotTemplate(compile_snapshot(
        resources, view, dataclasses.replace(nodes[0], instance=""), revision=revision,
        trace_sampling=inputs.trace_sampling, egress_hosts=dict(view.external_hosts),
        real_dns=view.real_dns, jwks=inputs.jwks_keys, jwks_errors=inputs.jwks_errors,
        versioned=False))  # render() computes each proxy's version
    return [(snapshot, sse("snapshot", payload))
            for snapshot, payload in (template.render(node) for node in nodes)]
