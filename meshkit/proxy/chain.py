"""Composes filters into one handler, once per snapshot (never per request).

``build_chain([a, b, c], terminal)`` returns ``h`` such that ``h(req)`` runs
``a(req, b'(req, c'(req, terminal)))``: the first filter in the list is the outermost.
The lists themselves (what runs, in which order, outbound and inbound) are defined
next to the listeners, as one explicit list each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from meshkit.proxy.http import Filter, Handler, Request, Response


def _link(filt: Filter, call_next: Handler) -> Handler:
    # A closure passing ``call_next`` positionally: about 0.1 µs per level cheaper than
    # functools.partial(filt, call_next=...), which merges a kwargs dict on every call.
    def handler(request: Request) -> Awaitable[Response]:
        return filt(request, call_next)

    return handler


def build_chain(filters: Sequence[Filter], terminal: Handler) -> Handler:
    handler = terminal
    for filt in reversed(filters):
        handler = _link(filt, handler)
    return handler
