"""JSON text of a large document made of many short ``json`` calls instead of one long one.

The C encoder holds the GIL from the start of a ``json.dumps`` to its end: on a worker thread, a
4 MB snapshot or a 2 MB apply answer (8,000 warnings) kept the control plane's event loop (pushes,
the CA) from running for 15-90 ms. `dumps` joins the members of dicts and lists down to ``depth``
levels itself, and calls the encoder on each member below; the text is exactly what
``encoder.encode(value)`` returns (tests check), for any encoder settings, because it uses the
encoder's own separators and key order.

Must not: keep state (the encoders passed in are configured once and never changed).
"""

from __future__ import annotations

import json
from typing import Any

SPLIT_DEPTH = 4  # levels joined here; deeper values (a route, a cluster, a message) are one call each


def dumps(value: Any, encoder: json.JSONEncoder, depth: int = SPLIT_DEPTH) -> str:
    """``encoder.encode(value)``, made of one call per member below ``depth`` levels."""
    if depth > 0 and encoder.indent is None:  # (an indenting encoder lays out its own separators)
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            keys = sorted(value) if encoder.sort_keys else list(value)
            return "{" + encoder.item_separator.join(
                f"{encoder.encode(key)}{encoder.key_separator}{dumps(value[key], encoder, depth - 1)}"
                for key in keys) + "}"
        if isinstance(value, list | tuple):
            return "[" + encoder.item_separator.join(dumps(item, encoder, depth - 1) for item in value) + "]"
    return encoder.encode(value)
