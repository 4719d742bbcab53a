"""Trace context: ``x-request-id`` when missing, W3C ``traceparent`` and B3 propagated per hop.

Every hop (outbound and inbound sidecar) acts as a span: it keeps the trace id and
sampling decision, makes the incoming span id the parent, and puts a fresh span id on
the request it forwards. ``tracestate`` and the single ``b3`` header pass through
untouched. A request with no trace context starts a new, sampled trace, so demo apps
that forward these headers produce one trace across the mesh. No spans are exported.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable

from meshkit.proxy.http import Handler, Headers, Request, Response

_HEX_DIGITS = "0123456789abcdef"


_bits = random.getrandbits  # ids need uniqueness, not secrecy: no syscall per request


def _random_hex(nbytes: int) -> str:
    # int.to_bytes().hex() is about 3x faster than f"{n:0{2 * nbytes}x}" for wide numbers.
    return _bits(nbytes * 8).to_bytes(nbytes, "big").hex()


def _uuid4_shaped(h: str) -> str:
    """32 hex digits -> a UUID4-shaped id (version 4, RFC 4122 variant), like Envoy's x-request-id."""
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def new_request_id() -> str:
    """A UUID4-shaped id (version 4, RFC 4122 variant), like Envoy's x-request-id."""
    return _uuid4_shaped(_random_hex(16))


def _is_hex(value: str, length: int) -> bool:
    # str.strip in C instead of building a set: all hex digits <=> nothing left after stripping them.
    return len(value) == length and not value.strip(_HEX_DIGITS) and value.strip("0") != ""


def _parse_traceparent(value: str) -> tuple[str, str, str] | None:
    parts = value.strip().lower().split("-")
    if len(parts) < 4 or parts[0] == "ff" or len(parts[0]) != 2:
        return None
    trace_id, span_id, flags = parts[1], parts[2], parts[3]
    if not (_is_hex(trace_id, 32) and _is_hex(span_id, 16) and len(flags) == 2):
        return None
    return trace_id, span_id, flags


_TRACE_HEADERS = frozenset(
    {"traceparent", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled"}
)


def propagate(headers: Headers) -> None:
    """Rewrite the trace headers of a request crossing this hop (see the module docstring).

    One pass over the header list finds the trace headers and x-request-id; only when trace
    headers are present is the list rebuilt without them. Then the new trace headers (and
    an x-request-id if missing) are appended.
    """
    items = headers.items()
    found: dict[str, str] | None = None
    has_request_id = False
    for name, value in items:
        if name in _TRACE_HEADERS:
            if found is None:
                found = {}
            found[name] = value
        elif name == "x-request-id":
            has_request_id = True
    if found is None:
        # No trace context (the common case at the first hop): one random draw for every id.
        h = _random_hex(40)  # request id (16 bytes), trace id (16), span id (8)
        trace_id, span_id = h[32:64], h[64:]
        if not has_request_id:
            items.append(("x-request-id", _uuid4_shaped(h)))
        items += (
            ("traceparent", f"00-{trace_id}-{span_id}-01"),
            ("x-b3-traceid", trace_id),
            ("x-b3-spanid", span_id),
            ("x-b3-sampled", "1"),
        )
        return
    kept = [item for item in items if item[0] not in _TRACE_HEADERS]
    if not has_request_id:
        kept.append(("x-request-id", new_request_id()))
    span_id = _random_hex(8)
    parsed = None
    traceparent = found.get("traceparent")
    if traceparent is not None:
        parsed = _parse_traceparent(traceparent)
    if parsed is not None:
        trace_id, parent_id, flags = parsed
        sampled = "1" if int(flags, 16) & 1 else "0"
    else:
        b3_trace = (found.get("x-b3-traceid") or "").lower()
        if _is_hex(b3_trace, 32) or _is_hex(b3_trace, 16):
            trace_id = b3_trace.rjust(32, "0")
            parent_id = (found.get("x-b3-spanid") or "").lower()
            sampled = found.get("x-b3-sampled") or "1"
            if sampled not in ("0", "1"):
                sampled = "1"
        else:
            trace_id = _random_hex(16)
            parent_id = ""
            sampled = "1"
        flags = "01" if sampled == "1" else "00"
    kept.append(("traceparent", f"00-{trace_id}-{span_id}-{flags}"))
    kept.append(("x-b3-traceid", trace_id))
    kept.append(("x-b3-spanid", span_id))
    if parent_id:
        kept.append(("x-b3-parentspanid", parent_id))
    kept.append(("x-b3-sampled", sampled))
    items[:] = kept


def tracing(request: Request, call_next: Handler) -> Awaitable[Response]:
    # Work on the way down only: a plain function handing back the next filter's awaitable
    # saves a coroutine frame per request (the caller awaits it, so errors surface the same).
    propagate(request.headers)
    return call_next(request)
