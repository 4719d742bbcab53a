"""Which request headers a demo app copies onto the calls it makes, as Bookinfo's apps do.

Tracing only works if every app forwards the trace context it received: sidecars create
the spans, but only the app knows which inbound request caused which outbound call. The
list follows Istio's Bookinfo (productpage.py and the reviews service), plus the single
``b3`` header.
"""

from __future__ import annotations

from collections.abc import Mapping

TRACE_HEADERS: tuple[str, ...] = (
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
)
"""Trace context: forwarded unchanged."""

CONTEXT_HEADERS: tuple[str, ...] = ("end-user", "user-agent", "cookie", "authorization", "jwt")
"""Application and session context: ``end-user`` is what Istio's header-match lessons route on."""

FORWARDED_HEADERS: tuple[str, ...] = TRACE_HEADERS + CONTEXT_HEADERS


def forwarded_headers(incoming: Mapping[str, str]) -> dict[str, str]:
    """The subset of ``incoming`` (a case-insensitive mapping) to send on downstream calls."""
    return {name: incoming[name] for name in FORWARDED_HEADERS if name in incoming}
