"""``kubectl patch`` on stored objects: a merge patch (RFC 7386), kubectl's default strategic one, or a
JSON patch (RFC 6902, ``--type json``).

``merge_patch(target, patch)``: objects merge key by key, ``null`` removes a key, anything else
replaces. ``strategic=True`` (kubectl's default for built-in kinds) also merges lists of objects
that all carry a ``name`` (containers, volumes, env) item by item on that name, as Kubernetes'
strategic merge patch does for those fields; other lists are replaced. The patch text is JSON or
YAML (``-p '{"spec":...}'``). Pure data: the CLI reads the stored object, patches, and applies it.

``json_patch(target, operations)``: RFC 6902 with the ``jsonpatch`` library, one operation after the
other, all or nothing. An operation that does not apply is a `JsonPatchError` with the message the
Kubernetes API server takes from its JSON patch library (evanphx/json-patch): ``testing value
/spec/replicas failed: test failed``, ``replace operation does not apply: doc is missing key:
/spec/x: missing value``...; kubectl prints it behind "The request is invalid" (`kubectl_invalid`).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer
import yaml

JSON_PATCH_OPS = ("add", "remove", "replace", "move", "copy", "test")
# what kubectl prints for a JSON patch the API server could not apply (HTTP 422, reason Invalid)
KUBECTL_INVALID = "The request is invalid: the server rejected our request due to an error in our request"


class JsonPatchError(ValueError):
    """An operation of a JSON patch that does not apply (the message as the API server words it)."""


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


def parse_json_patch(text: str) -> list[dict[str, Any]]:
    """The ``-p`` text of ``--type json`` -> its operations; ValueError with the API server's words
    (kubectl sends the text as it is; the server decodes it as a list of operations)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"the patch is not valid JSON or YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(value, list):
        kind = "object" if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"json: cannot unmarshal {kind} into Go value of type jsonpatch.Patch")
    for index, op in enumerate(value):
        if not isinstance(op, dict):
            raise ValueError(f"json: cannot unmarshal {type(op).__name__} into Go value of type "
                             f"jsonpatch.Operation (operation {index})")
    return value


def json_patch(target: Any, operations: list[dict[str, Any]]) -> Any:
    """``target`` with the RFC 6902 ``operations`` applied in order (``target`` is not changed);
    `JsonPatchError` naming the first operation that does not apply, nothing applied then."""
    doc = copy.deepcopy(target)
    for op in operations:
        kind = op.get("op")
        if kind not in JSON_PATCH_OPS:
            raise JsonPatchError(f"Unexpected kind: {kind if kind is not None else 'unknown'}")
        try:
            doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
        except jsonpatch.JsonPatchTestFailed:
            raise JsonPatchError(f"testing value {op.get('path')} failed: test failed") from None
        except jsonpatch.InvalidJsonPatch as exc:
            raise JsonPatchError(f"{kind} operation is invalid: {exc}") from None
        except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException, TypeError) as exc:
            raise JsonPatchError(_does_not_apply(doc, op, exc)) from None
    return doc


def _does_not_apply(doc: Any, op: dict[str, Any], exc: Exception) -> str:
    """evanphx/json-patch's message for an operation whose path (or ``from``) is not in ``doc``."""
    kind, path = op["op"], str(op.get("path"))
    if kind in ("move", "copy") and not _resolves(doc, str(op.get("from"))):
        return f"{kind} operation does not apply: doc is missing from path: {op.get('from')}: missing value"
    parent, _, key = path.rpartition("/")
    if not _resolves(doc, parent):
        shown = f'"{path}"' if kind in ("add", "remove") else path
        return f"{kind} operation does not apply: doc is missing path: {shown}: missing value"
    container = jsonpointer.resolve_pointer(doc, parent)
    if isinstance(container, list):
        return f"Unable to access invalid index: {key}: invalid index referenced"
    if kind == "remove":
        return f"error in remove for path: '{path}': Unable to remove nonexistent key: {key}: missing value"
    if kind == "replace":
        return f"replace operation does not apply: doc is missing key: {path}: missing value"
    return f"{kind} operation does not apply: {exc}"


def _resolves(doc: Any, pointer: str) -> bool:
    try:
        jsonpointer.resolve_pointer(doc, pointer)
    except (jsonpointer.JsonPointerException, TypeError):
        return False
    return True


def kubectl_invalid(error: JsonPatchError) -> str:
    """kubectl's two lines for it: the Status's message, then its cause (the library's words)."""
    return f"{KUBECTL_INVALID}\ncause: {error}"

