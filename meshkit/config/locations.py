"""Where each resource of an input file starts: ``file:line``, for the messages about it.

``istioctl analyze`` names the file and line of the resource a message is about
(``(VirtualService default/reviews reviews.yaml:8)``); meshkit does the same. `index_locations`
reads a text's YAML structure (not its values: the loader has already judged them) and maps every
resource reference the loader and analyzer use (``Kind/namespace/name``, or ``<origin> document N``
for a document without a name) to ``(origin, line)``. `locate` puts them on messages.

Pure functions over text; it must not read files itself, nor change a message's meaning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import yaml

from meshkit.config.messages import Message

Location = tuple[str, int]


def _scalar(node: yaml.Node | None) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str) else None


def _get(node: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if _scalar(key_node) == key:
            return value_node if isinstance(value_node, yaml.Node) else None
    return None


def _refs(node: yaml.Node) -> list[str]:
    """``Kind/namespace/name``; a resource that names no namespace also ``Kind/*/name`` (it takes
    the namespace given on the command line, ``apply -n``)."""
    kind, metadata = _scalar(_get(node, "kind")), _get(node, "metadata")
    name = _scalar(_get(metadata, "name")) if metadata is not None else None
    if kind is None or name is None:
        return []
    namespace = _scalar(_get(metadata, "namespace")) if metadata is not None else None
    return [f"{kind}/{namespace}/{name}"] if namespace else [f"{kind}/default/{name}", f"{kind}/*/{name}"]


def index_locations(text: str, origin: str) -> dict[str, Location]:
    """``{reference: (origin, 1-based line)}`` for every document of ``text`` (``kind: List`` items too).

    Text that is not YAML gives an empty index (the loader reports it, with its own line)."""
    found: dict[str, Location] = {}
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return found
    number = 0
    for node in nodes:
        number += 1
        if node is None:
            continue
        line = node.start_mark.line + 1
        found.setdefault(f"{origin} document {number}", (origin, line))
        items = _get(node, "items") if _scalar(_get(node, "kind")) == "List" else None
        for item in items.value if isinstance(items, yaml.SequenceNode) else [node]:
            for ref in _refs(item):
                found.setdefault(ref, (origin, item.start_mark.line + 1))
    return found


def merge(indexes: Iterable[Mapping[str, Location]]) -> dict[str, Location]:
    """One index of several files (the first file naming a resource wins)."""
    merged: dict[str, Location] = {}
    for index in indexes:
        for ref, where in index.items():
            merged.setdefault(ref, where)
    return merged


def _lookup(resource: str, index: Mapping[str, Location]) -> Location | None:
    _, colon, ref = resource.partition(": ")  # the loader's "file.yaml: Kind/ns/name"
    ref = ref if colon else resource
    if ref in index:
        return index[ref]
    kind, _, rest = ref.partition("/")
    _, slash, name = rest.partition("/")
    return index.get(f"{kind}/*/{name}") if slash else None


def locate(messages: Iterable[dict[str, str]], index: Mapping[str, Location]) -> list[dict[str, str]]:
    """Message dicts (``Message.to_dict()``) with ``location`` set where the resource is in ``index``."""
    out = []
    for message in messages:
        where = _lookup(message.get("resource", ""), index)
        out.append({**message, "location": f"{where[0]}:{where[1]}"} if where and "location" not in message
                   else dict(message))
    return out


def locate_messages(messages: Iterable[Message], index: Mapping[str, Location]) -> list[Message]:
    """`Message` objects with ``file`` and ``line`` set where the resource is in ``index``."""
    out: list[Message] = []
    for message in messages:
        where = _lookup(message.resource, index)
        out.append(dataclasses.replace(message, file=where[0], line=where[1]) if where else message)
    return out
