"""``kubectl patch`` on stored objects: a merge patch (RFC 7386) or kubectl's default strategic one.

``merge_patch(target, patch)``: objects merge key by key, ``null`` removes a key, anything else
replaces. ``strategic=True`` (kubectl's default for built-in kinds) also merges lists of objects
that all carry a ``name`` (containers, volumes, env) item by item on that name, as Kubernetes'
strategic merge patch does for those fields; other lists are replaced. The patch text is JSON or
YAML (``-p '{"spec":...}'``). Pure data: the CLI reads the stored object, patches, and applies it.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml


def parse_patch(text: str) -> dict[str, Any]:
    """The ``-p`` text -> a patch object; ValueError saying what is wrong."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"the patch is not valid JSON or YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the patch must be an object, got {type(value).__name__}")
    return value


def merge_patch(target: Any, patch: Any, *, strategic: bool = False) -> Any:
    """``target`` with ``patch`` applied (neither is changed)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif strategic and _named_items(value) and _named_items(result.get(key)):
            result[key] = _merge_named(result[key], value)
        else:
            result[key] = merge_patch(result.get(key), value, strategic=strategic)
    return result


def _named_items(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) and "name" in i for i in value)


def _merge_named(current: list[dict[str, Any]], patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        index = next((i for i, old in enumerate(merged) if old["name"] == item["name"]), None)
        if index is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[index] = merge_patch(merged[index], item, strategic=True)
    return merged
