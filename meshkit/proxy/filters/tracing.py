"""Trace context and spans: ``x-request-id`` when missing, W3C ``traceparent`` and B3 per hop.

Every hop (outbound and inbound sidecar) acts as a span: it keeps the trace id and
sampling decision, makes the incoming span id the parent, and puts a fresh span id on
the request it forwards (that id is this hop's span). ``tracestate`` and the single ``b3``
header pass through untouched, so demo apps that forward these headers produce one trace
across the mesh.

Sampling is Envoy's: an incoming decision (``traceparent`` flags, ``x-b3-sampled``,
``x-b3-flags: 1``) is honoured; a request without one is sampled with the snapshot's
``tracing.sampling`` percentage (Istio's default 1%); ``x-client-trace-id`` or
``x-envoy-force-trace`` force sampling. A sampled request is recorded as a span (CLIENT on
the outbound listener and gateways, SERVER on the inbound) by `meshkit.proxy.spans`; an
unsampled one costs only the header rewrite.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable

from meshkit.proxy.bodies import ObservedBody
from meshkit.proxy.http import Filter, Handler, Headers, Request, Response
from meshkit.proxy.spans import SpanRecorder

_HEX_DIGITS = "0123456789abcdef"


_bits = random.getrandbits  # ids need uniqueness, not secrecy: no syscall per request
_random = random.random
_FORCE_HEADERS = frozenset({"x-client-trace-id", "x-envoy-force-trace"})
DEFAULT_SAMPLING = 1.0  # percent: Istio's meshConfig.defaultConfig.tracing.sampling default


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
    {"traceparent", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"}
)

SpanContext = tuple[str, str, str]  # (trace id, this hop's span id, parent span id or "")


def _decide(sampling: float, forced: bool) -> bool:
    """A new sampling decision: forced by header, else ``sampling`` percent of requests."""
    return forced or sampling >= 100.0 or (sampling > 0.0 and _random() * 100.0 < sampling)


def propagate(headers: Headers, sampling: float = 100.0) -> SpanContext | None:
    """Rewrite the trace headers of a request crossing this hop (see the module docstring).

    One pass over the header list finds the trace headers and x-request-id; only when trace
    headers are present is the list rebuilt without them. Then the new trace headers (and
    an x-request-id if missing) are appended. Returns this hop's span context when the
    request is sampled, else None.
    """
    items = headers.items()
    found: dict[str, str] | None = None
    has_request_id = forced = False
    for name, value in items:
        if name in _TRACE_HEADERS:
            if found is None:
                found = {}
            found[name] = value
        elif name == "x-request-id":
            has_request_id = True
        elif name in _FORCE_HEADERS:
            forced = True
    if found is None:
        # No trace context (the common case at the first hop): one random draw for every id.
        h = _random_hex(40)  # request id (16 bytes), trace id (16), span id (8)
        trace_id, span_id = h[32:64], h[64:]
        if not has_request_id:
            items.append(("x-request-id", _uuid4_shaped(h)))
        sampled = _decide(sampling, forced)
        items += (
            ("traceparent", f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"),
            ("x-b3-traceid", trace_id),
            ("x-b3-spanid", span_id),
            ("x-b3-sampled", "1" if sampled else "0"),
        )
        return (trace_id, span_id, "") if sampled else None
    kept = [item for item in items if item[0] not in _TRACE_HEADERS]
    if not has_request_id:
        kept.append(("x-request-id", new_request_id()))
    span_id = _random_hex(8)
    parsed = None
    traceparent = found.get("traceparent")
    if traceparent is not None:
        parsed = _parse_traceparent(traceparent)
    decision: str | None
    if parsed is not None:
        trace_id, parent_id, flags = parsed
        try:
            decision = "1" if int(flags, 16) & 1 else "0"
        except ValueError:
            decision = None
    else:
        b3_trace = (found.get("x-b3-traceid") or "").lower()
        if _is_hex(b3_trace, 32) or _is_hex(b3_trace, 16):
            trace_id = b3_trace.rjust(32, "0")
            parent_id = (found.get("x-b3-spanid") or "").lower()
            if not _is_hex(parent_id, 16):
                parent_id = ""
            decision = found.get("x-b3-sampled")
            if decision in ("true", "d"):
                decision = "1"
            elif decision == "false":
                decision = "0"
            elif decision not in ("0", "1"):
                decision = None
        else:
            trace_id = _random_hex(16)
            parent_id = ""
            decision = None
    if found.get("x-b3-flags") == "1":
        decision = "1"  # B3 debug: always sampled
    if decision is None:  # context without a decision: this hop decides (an explicit "0" stands)
        decision = "1" if _decide(sampling, forced) else "0"
    flags = "01" if decision == "1" else "00"
    kept.append(("traceparent", f"00-{trace_id}-{span_id}-{flags}"))
    kept.append(("x-b3-traceid", trace_id))
    kept.append(("x-b3-spanid", span_id))
    if parent_id:
        kept.append(("x-b3-parentspanid", parent_id))
    kept.append(("x-b3-sampled", decision))
    items[:] = kept
    return (trace_id, span_id, parent_id) if decision == "1" else None


def tracing_filter(recorder: SpanRecorder | None, kind: str) -> Filter:
    """The tracing filter of one listener: ``kind`` is the span kind it records (CLIENT/SERVER).

    An unsampled request (or a proxy that ships spans nowhere) goes on as a plain function,
    one coroutine frame less; only a sampled one is awaited here and recorded.
    """

    def tracing(request: Request, call_next: Handler) -> Awaitable[Response]:
        context = propagate(request.headers, getattr(request.config, "trace_sampling", DEFAULT_SAMPLING))
        if context is None or recorder is None or not getattr(request.config, "trace_report", True):
            return call_next(request)
        return _traced(recorder, kind, context, request, call_next)

    return tracing


async def _traced(recorder: SpanRecorder, kind: str, context: SpanContext, request: Request,
                  call_next: Handler) -> Response:
    trace_id, span_id, parent_id = context
    try:
        response = await call_next(request)
    except BaseException:
        recorder.record(kind, trace_id, span_id, parent_id, request, None, 0, 0)
        raise
    body = response.body
    if isinstance(body, bytes):
        recorder.record(kind, trace_id, span_id, parent_id, request, response, response.status, len(body))
    else:
        response.body = ObservedBody.observe(
            body, lambda b: recorder.record(kind, trace_id, span_id, parent_id, request, response,
                                            response.status, b.sent)
        )
    return response


tracing = tracing_filter(None, "CLIENT")  # propagation only (no span recorder)
