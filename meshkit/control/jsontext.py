"""JSON text of a large document made of many short ``json`` calls instead of one long one.

The C encoder holds the GIL from the start of a ``json.dumps`` to its end: on a worker thread, a
4 MB snapshot or a 2 MB apply answer (8,000 warnings) kept the control plane's event loop (pushes,
the CA) from running for 15-90 ms. `dumps` joins the members of dicts and lists down to ``depth``
levels itself, and calls the encoder on the members below, a run of members per call (about
``BATCH_CHARS`` of text: each call of ``encoder.encode`` costs a few microseconds before it
writes anything, one call per route was 40 % more CPU than one call for the whole 4 MB); the text
is exactly what ``encoder.encode(value)`` returns (tests check), for any encoder settings,
because it uses the encoder's own separators and key order.

Must not: keep state (the encoders passed in are configured once and never changed).
"""

from __future__ import annotations

import json
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
