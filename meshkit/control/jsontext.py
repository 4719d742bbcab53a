"""JSON text of a large document made of many short ``json`` calls instead of one long one.

The C encoder holds the GIL from the start of a ``json.dumps`` to its end: on a worker thread, a
4 MB snapshot or a 2 MB apply answer (8,000 warnings) kept the control plane's event loop (pushes,
the CA) from running for 15-90 ms. `dumps` joins the members of dicts and lists down to ``depth``
levels itself, and calls the encoder on the members below, a run of members per call (about
``BATCH_CHARS`` of text: each call of ``encoder.encode`` costs a few microseconds before it
writes anything, one call per route was 40 % more CPU than one call for the whole 4 MB); the text
is exactly what ``encoder.encode(value)`` returns (tests check), for any encoder settings,
because it uses the encoder's own separators and key order.

`loads` is the way back: ``json.loads(text)``, its objects and arrays down to a few levels walked
here and each member below decoded by its own ``raw_decode`` call (a 1 MB body in one call held
the GIL for 15-30 ms).

Must not: keep state (the encoders passed in are configured once and never changed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

SPLIT_DEPTH = 4  # levels joined here; deeper values (a route, a cluster, a message) are encoded in runs
BATCH_CHARS = 32_000  # text per encoder call aimed at (well under a millisecond of the GIL)


def dumps(value: Any, encoder: json.JSONEncoder, depth: int = SPLIT_DEPTH) -> str:
    """``encoder.encode(value)``, made of short calls below ``depth`` levels."""
    if depth > 0 and encoder.indent is None:  # (an indenting encoder lays out its own separators)
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            keys = sorted(value) if encoder.sort_keys else list(value)
            if depth == 1:
                return "{" + _runs(keys, lambda run: encoder.encode({key: value[key] for key in run}),
                                   encoder.item_separator) + "}"
            return "{" + encoder.item_separator.join(
                f"{encoder.encode(key)}{encoder.key_separator}{dumps(value[key], encoder, depth - 1)}"
                for key in keys) + "}"
        if isinstance(value, list | tuple):
            if depth == 1:
                return "[" + _runs(value, lambda run: encoder.encode(list(run)), encoder.item_separator) + "]"
            return "[" + encoder.item_separator.join(dumps(item, encoder, depth - 1) for item in value) + "]"
    return encoder.encode(value)


def _runs(members: Sequence[Any], encode: Callable[[Sequence[Any]], str], separator: str) -> str:
    """The members' text, encoded a run at a time: ``encode(run)`` is a list's or dict's text whose
    brackets are dropped. The run's length follows the members' mean length so far."""
    texts: list[str] = []
    done, chars, count = 0, 0, 1  # the first member alone: its length sizes the next run
    while done < len(members):
        text = encode(members[done:done + count])[1:-1]
        texts.append(text)
        done, chars = done + count, chars + len(text)
        count = max(1, BATCH_CHARS * done // max(chars, 1))
    return separator.join(texts)


LOADS_DEPTH = 5  # a List body, its items, a resource, its spec, a list in it: each member below in one call
_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # json.decoder's own


def loads(raw: bytes | str, depth: int = LOADS_DEPTH) -> Any:
    """``json.loads(raw)``, its objects and arrays down to ``depth`` levels walked here, each member
    below decoded by a ``raw_decode`` call of its own. Text this walk does not take (invalid JSON,
    nesting too deep) goes to ``json.loads`` itself, which raises its own error."""
    text = raw.decode(json.detect_encoding(raw), "surrogatepass") if isinstance(raw, bytes) else raw
    try:
        value, end = _value(text, _skip(text, 0), depth)
        if _skip(text, end) != len(text):
            raise ValueError("extra data")
    except (ValueError, IndexError, RecursionError):
        return json.loads(text)
    return value


def _skip(text: str, at: int) -> int:
    found = _WHITESPACE.match(text, at)
    assert found is not None  # (the pattern matches the empty string)
    return found.end()


def _value(text: str, at: int, depth: int) -> tuple[Any, int]:
    """The value starting at ``at`` (no whitespace before it) and where it ends."""
    opening = text[at]
    if depth > 0 and opening == "{":
        found: dict[str, Any] = {}
        at = _skip(text, at + 1)
        if text[at] == "}":
            return found, at + 1
        while True:
            if text[at] != '"':
                raise ValueError("expected a key")
            key, at = json.decoder.scanstring(text, at + 1)  # type: ignore[attr-defined]
            at = _skip(text, at)
            if text[at] != ":":
                raise ValueError("expected ':'")
            found[key], at = _value(text, _skip(text, at + 1), depth - 1)
            at = _skip(text, at)
            if text[at] == "}":
                return found, at + 1
            if text[at] != ",":
                raise ValueError("expected ',' or '}'")
            at = _skip(text, at + 1)
    if depth > 0 and opening == "[":
        items: list[Any] = []
        at = _skip(text, at + 1)
        if text[at] == "]":
            return items, at + 1
        while True:
            item, at = _value(text, at, depth - 1)
            items.append(item)
            at = _skip(text, at)
            if text[at] == "]":
                return items, at + 1
            if text[at] != ",":
                raise ValueError("expected ',' or ']'")
            at = _skip(text, at + 1)
    return _DECODER.raw_decode(text, at)
