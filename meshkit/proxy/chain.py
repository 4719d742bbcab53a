"""Composes filters into one handler, once per snapshot (never per request).

``build_chain([a, b, c], terminal)`` returns ``h`` such that ``h(req)`` runs
``a(req, b'(req, c'(req, terminal)))``: the first filter in the list is the outermost.
The lists themselves (what runs, in which order, outbound and inbound) are defined
next to the listeners, as one explicit list each.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from meshkit.proxy.http import Filter, Handler


def build_chain(filters: Sequence[Filter], terminal: Handler) -> Handler:
    handler = terminal
    for filt in reversed(filters):
        handler = partial(filt, call_next=handler)  # type: ignore[assignment]
    return handler
