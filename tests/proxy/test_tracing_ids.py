"""Trace context validation and the first-hop fast path of tracing.propagate (unit)."""

from __future__ import annotations

import re

from meshkit.proxy.filters.tracing import _is_hex, propagate
from meshkit.proxy.http import Headers

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-a[0-9a-f]{3}-[0-9a-f]{12}$")


def test_is_hex_checks_length_digits_and_all_zero() -> None:
    assert _is_hex(TRACE, 32)
    assert not _is_hex(TRACE, 16)
    assert not _is_hex(TRACE[:-1] + "g", 32)
    assert not _is_hex(TRACE[:-1] + "-", 32)
    assert not _is_hex("0" * 32, 32)  # an all-zero id is invalid (W3C)
    assert not _is_hex(" " + TRACE[1:], 32)


def test_invalid_traceparent_ids_start_a_new_trace() -> None:
    for bad in (f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE[:-1]}z-{SPAN}-01"):
        headers = Headers([("traceparent", bad)])
        propagate(headers)
        _, trace, _, _ = headers.get("traceparent").split("-")
        assert trace != TRACE and _is_hex(trace, 32), bad
        assert headers.get("x-b3-parentspanid") is None


def test_first_hop_gets_every_id_fresh_and_consistent() -> None:
    seen = set()
    for _ in range(200):
        headers = Headers([("host", "reviews"), ("user-agent", "curl")])
        propagate(headers)
        assert [name for name, _ in headers] == [
            "host", "user-agent", "x-request-id", "traceparent", "x-b3-traceid", "x-b3-spanid",
            "x-b3-sampled",
        ]
        request_id = headers.get("x-request-id")
        version, trace, span, flags = headers.get("traceparent").split("-")
        assert UUID4.match(request_id), request_id
        assert (version, flags, headers.get("x-b3-sampled")) == ("00", "01", "1")
        assert (headers.get("x-b3-traceid"), headers.get("x-b3-spanid")) == (trace, span)
        assert len(trace) == 32 and len(span) == 16
        seen.update((request_id, trace, span))
    assert len(seen) == 600
    kept = Headers([("x-request-id", "from-app")])
    propagate(kept)
    assert kept.get_all("x-request-id") == ["from-app"]
