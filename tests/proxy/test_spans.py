"""Sampling as Istio samples, spans recorded by real listeners, shipped to a real collector, bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.control.server import run_control_plane
from meshkit.proxy.filters.tracing import propagate
from meshkit.proxy.http import Headers
from meshkit.proxy.listener import Listener
from meshkit.proxy.pipeline import build_inbound, build_outbound
from meshkit.proxy.spans import SpanRecorder
from meshkit.proxy.stats import IstioMetrics
from meshkit.proxy.upstream import Upstream
from meshkit.proxy.xds import ConfigState, XdsClient
from tests.proxy.conftest import EchoApp, make_snapshot

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
B3 = [("x-b3-traceid", TRACE), ("x-b3-spanid", PARENT)]


def _sampled(sampling: float, headers: list[tuple[str, str]] | None = None, n: int = 2000) -> int:
    count = 0
    for _ in range(n):
        h = Headers(list(headers or []))
        context = propagate(h, sampling)
        assert (context is not None) == (h.get("x-b3-sampled") == "1")
        assert h.get("traceparent").endswith("-01" if context else "-00")
        count += context is not None
    return count


def test_sampling_percentage_of_new_traces() -> None:
    assert _sampled(0.0) == 0
    assert _sampled(100.0) == 2000
    assert 0 < _sampled(1.0, n=20000) < 400  # Istio's default: 1% (200 expected)
    assert 700 < _sampled(25.0, n=4000) < 1300


def test_forcing_headers_and_incoming_decisions() -> None:
    assert _sampled(0.0, [("x-client-trace-id", "abc")], n=50) == 50
    assert _sampled(0.0, [("x-envoy-force-trace", "1")], n=50) == 50
    assert _sampled(0.0, [*B3, ("x-b3-sampled", "1")], n=50) == 50
    assert _sampled(0.0, [("traceparent", f"00-{TRACE}-{PARENT}-01")], n=50) == 50
    assert _sampled(0.0, [("x-b3-traceid", TRACE), ("x-b3-flags", "1")], n=50) == 50
    # an upstream decision not to sample stands, whatever this hop's rate
    assert _sampled(100.0, [("traceparent", f"00-{TRACE}-{PARENT}-00")], n=50) == 0
    assert _sampled(100.0, [*B3, ("x-b3-sampled", "0")], n=50) == 0
    # trace context without a decision: this hop decides
    assert _sampled(0.0, B3, n=50) == 0
    context = propagate(Headers([("traceparent", f"00-{TRACE}-{PARENT}-01")]), 0.0)
    assert context is not None and context[0] == TRACE and context[2] == PARENT


async def _listener(kind: str, snapshot: dict[str, Any], recorder: SpanRecorder) -> tuple[Listener, int]:
    state = ConfigState()
    assert state.apply(snapshot) is None
    upstream = Upstream()
    build = build_outbound if kind == "outbound" else build_inbound
    listener = Listener(kind, build(upstream.send, IstioMetrics(), None, recorder), state)
    port = await listener.start("127.0.0.1", 0)
    return listener, port


async def _send(port: int, n: int, headers: dict[str, str] | None = None) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(f"http://127.0.0.1:{port}/reviews/1?x=1", data=b"hello",
                                    headers={"Host": "reviews", **(headers or {})}) as response:
                assert response.status == 200
                await response.read()


@pytest.mark.parametrize(("sampling", "expected"), [(0.0, 0), (100.0, 20)])
async def test_outbound_listener_records_sampled_requests(echo_app: EchoApp, sampling: float,
                                                          expected: int) -> None:
    recorder = SpanRecorder("productpage-v1-0.default")
    snapshot = {**make_snapshot(echo_app.port), "tracing": {"sampling": sampling}}
    listener, port = await _listener("outbound", snapshot, recorder)
    try:
        await _send(port, 20)
        assert recorder.recorded == expected
        await _send(port, 3, {"x-client-trace-id": "forced"})  # forcing works at any rate
        assert recorder.recorded == expected + 3
    finally:
        await listener.close(0.1)
    spans = recorder.take()
    assert len(spans) == expected + 3 and recorder.pending() == 0
    span = spans[-1]
    tags = span["tags"]
    assert span["kind"] == "CLIENT" and span["name"] == "reviews/*" and "parentId" not in span
    assert tags["istio.canonical_service"] == "productpage"
    assert tags["upstream_cluster"] == "reviews|"
    assert tags["http.status_code"] == "200" and tags["response_flags"] == "-"
    assert tags["request_size"] == "5" and int(tags["response_size"]) > 0
    assert tags["peer.address"] == "127.0.0.1" and tags["node_id"] == "productpage-v1-0.default"
    assert tags["connection_security_policy"] == "none" and "error" not in tags
    assert span["remoteEndpoint"] == {"ipv4": "127.0.0.1", "port": echo_app.port}
    assert span["duration"] > 0 and len(span["traceId"]) == 32 and len(span["id"]) == 16


async def test_inbound_server_span_is_the_child_of_the_callers_span(echo_app: EchoApp) -> None:
    recorder = SpanRecorder("reviews-v1-0.default")
    snapshot = {**make_snapshot(echo_app.port, app_port=echo_app.port), "tracing": {"sampling": 0}}
    listener, port = await _listener("inbound", snapshot, recorder)
    try:
        await _send(port, 1, {"traceparent": f"00-{TRACE}-{PARENT}-01", "x-request-id": "rid-7"})
    finally:
        await listener.close(0.1)
    (span,) = recorder.take()
    assert (span["traceId"], span["parentId"], span["kind"]) == (TRACE, PARENT, "SERVER")
    assert span["name"] == "productpage.default.svc.cluster.local:9080/*"  # Istio's inbound decorator
    assert span["tags"]["guid:x-request-id"] == "rid-7"
    assert span["tags"]["upstream_cluster"].startswith("inbound|")


def _record_fake(recorder: SpanRecorder, n: int) -> None:
    from meshkit.proxy.http import Request, Response  # noqa: PLC0415

    for i in range(n):
        request = Request("GET", f"/{i}", "reviews:9080", Headers([("x-request-id", f"r{i}")]))
        recorder.record("CLIENT", f"{i + 1:032x}", f"{i + 1:016x}", "", request, Response(200), 200, 2)


async def test_buffer_is_bounded_and_shipping_reaches_the_collector(tmp_path: Path) -> None:
    recorder = SpanRecorder("ratings-v1-0.default", capacity=10, batch=4)
    _record_fake(recorder, 25)
    assert recorder.stats() == {"recorded": 25, "shipped": 0, "dropped": 15, "buffered": 10,
                                     "capacity": 10, "batches_failed": 0}
    dead = XdsClient("http://127.0.0.1:9", "x.default", ConfigState())  # nothing listens on port 9
    await recorder.flush(dead.post)
    assert (recorder.dropped, recorder.batches_failed, recorder.pending()) == (19, 1, 6)
    async with await run_control_plane(port=0, state_dir=tmp_path / "control", record_address=False,
                                       with_ca=False) as control:
        token = control.control_plane.admin_token  # any credential of the control plane: here, the admin's
        client = XdsClient(control.url, "ratings-v1-0.default", ConfigState(), token=lambda: token)
        await recorder.flush(client.post)
        assert (recorder.shipped, recorder.pending()) == (6, 0)
        store = control.control_plane.traces
        assert store.stats()["spans"] == 6
        assert store.trace("r24") is not None and store.trace("r18") is None  # the oldest were dropped


async def test_span_reporting_disabled_still_propagates(echo_app: EchoApp) -> None:
    recorder = SpanRecorder("reviews-v1-0.default")
    snapshot = {**make_snapshot(echo_app.port), "tracing": {"sampling": 100, "report": False}}
    listener, port = await _listener("outbound", snapshot, recorder)
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/", headers={"Host": "reviews"}
        ) as response:
            seen = dict((await response.json())["headers"])
    finally:
        await listener.close(0.1)
    assert seen["x-b3-sampled"] == "1" and recorder.recorded == 0  # Telemetry disableSpanReporting


@pytest.mark.parametrize(("tracing", "error"), [
    ({"sampling": 101}, "tracing.sampling: expected a percentage from 0 to 100, got 101"),
    ({"sampling": "1%"}, "tracing.sampling: expected a percentage from 0 to 100, got '1%'"),
    ({"report": "no"}, "tracing.report: expected true or false, got 'no'"),
    ([], "tracing: expected an object or null, got []"),
])
def test_bad_tracing_sections_are_nacked_by_key(tracing: Any, error: str) -> None:
    state = ConfigState()
    assert state.apply({**make_snapshot(9), "tracing": tracing}) == error
