"""The trace collector: validation, queries, bounded memory under a flood, OTLP and Zipkin export."""

from __future__ import annotations

import base64
import gc
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshkit.control.server import RunningControlPlane
from meshkit.control.trace_view import waterfall
from meshkit.control.traces import TraceExporter, TraceStore, otlp_json
from tests.e2e.traffic import eventually

API = "/api/v1/traces"


def span(trace: int, span_id: int, parent: int | None = None, *, service: str = "reviews",
         kind: str = "SERVER", start: int = 1_700_000_000_000_000, duration: int = 1000,
         status: str = "200", request_id: str = "", flags: str = "-") -> dict[str, Any]:
    """A Zipkin v2 span with the tags a meshkit sidecar sets (see meshkit/proxy/spans.py)."""
    tags = {
        "component": "proxy", "node_id": f"{service}-v1-0.default", "istio.canonical_service": service,
        "istio.canonical_revision": "v1", "istio.namespace": "default", "istio.mesh_id": "cluster.local",
        "http.method": "GET", "http.url": f"http://{service}:9080/{service}/0", "http.protocol": "HTTP/1.1",
        "http.status_code": status, "response_flags": flags, "upstream_cluster": f"inbound|9080||{service}",
        "upstream_cluster.name": f"inbound|9080||{service}", "peer.address": "127.0.0.1",
        "request_size": "0", "response_size": "358", "guid:x-request-id": request_id or f"req-{trace}",
        "user_agent": "curl/8.5.0", "downstream_cluster": "-", "connection_security_policy": "mutual_tls",
    }
    if status == "0" or status >= "500":
        tags["error"] = "true"
    out = {"traceId": f"{trace:032x}", "id": f"{span_id:016x}", "kind": kind,
           "name": f"{service}.default.svc.cluster.local:9080/*", "timestamp": start, "duration": duration,
           "localEndpoint": {"serviceName": f"{service}.default"}, "tags": tags}
    if parent is not None:
        out["parentId"] = f"{parent:016x}"
    return out


def three_hop_trace(trace: int, slow_ms: int = 0, status: str = "200") -> list[dict[str, Any]]:
    t0 = 1_700_000_000_000_000 + trace * 10_000_000
    return [
        span(trace, 1, None, service="productpage", kind="CLIENT", start=t0, duration=5000 + slow_ms * 1000),
        span(trace, 2, 1, service="reviews", start=t0 + 500, duration=4000 + slow_ms * 1000),
        span(trace, 3, 2, service="reviews", kind="CLIENT", start=t0 + 800, duration=3000 + slow_ms * 1000,
             status=status),
        span(trace, 4, 3, service="ratings", start=t0 + 1000 + slow_ms * 1000, duration=1000, status=status),
    ]


def test_queries_by_service_duration_error_and_request_id() -> None:
    store = TraceStore()
    store.add(three_hop_trace(1))
    store.add(three_hop_trace(2, slow_ms=1000))
    store.add(three_hop_trace(3, status="503"))
    assert [t["trace_id"][-1] for t in store.find()] == ["3", "2", "1"]  # newest first
    assert [t["trace_id"][-1] for t in store.find(min_duration=1.0)] == ["2"]
    assert [t["trace_id"][-1] for t in store.find(errors=True)] == ["3"]
    assert [t["trace_id"][-1] for t in store.find(request_id="req-1")] == ["1"]
    assert len(store.find(service="ratings")) == 3 and store.find(service="details") == []
    summary = store.find(request_id="req-2")[0]
    assert summary["root"] == {"service": "productpage", "status": "200",
                               "name": "productpage.default.svc.cluster.local:9080/*"}
    assert summary["spans"] == 4 and summary["duration_ms"] == pytest.approx(1005.0)
    assert summary["services"] == ["productpage", "ratings", "reviews"]
    assert store.trace("req-2") == store.trace(f"{2:032x}")
    rows = waterfall(store.trace("req-2") or [])
    assert [(r.service, r.kind, r.depth) for r in rows] == [
        ("productpage", "CLIENT", 0), ("reviews", "SERVER", 1), ("reviews", "CLIENT", 2),
        ("ratings", "SERVER", 3)]
    assert rows[3].offset_ms == pytest.approx(1001.0)  # the delay sits before ratings starts


def test_malformed_spans_are_rejected_by_field_and_counted() -> None:
    store = TraceStore()
    good = span(1, 1)
    stored, errors = store.add([good, {**good, "traceId": "xyz"}, {**good, "duration": -1}, "nope",
                                {**good, "id": "12", "kind": "SIDEWAYS"}])
    assert stored == 1 and store.rejected == 4
    assert errors[0].startswith("spans[1].traceId: expected 16 or 32 hex digits")
    assert errors[1].startswith("spans[2].duration:") and errors[2].startswith("spans[3].span:")
    long = {**good, "id": f"{2:016x}", "tags": {**good["tags"], "http.url": "x" * 10_000}}
    store.add([long])
    assert len(store.trace(f"{1:032x}")[-1]["tags"]["http.url"]) == 256  # type: ignore[index]


def _flood(store: TraceStore, traces: int, first: int = 0) -> None:
    for trace in range(first, first + traces):
        store.add(three_hop_trace(trace))


def test_a_flood_stays_within_the_span_bound_oldest_dropped_first_and_counted() -> None:
    store = TraceStore(max_spans=4000)
    gc.collect()
    tracemalloc.start()
    try:
        _flood(store, 1000)  # exactly full
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        _flood(store, 10_000, first=1000)  # ten times the bound
        gc.collect()
        flooded = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    print(f"collector memory: {full / 2**20:.1f} MiB at 4000 spans, "
          f"{flooded / 2**20:.1f} MiB after 40000 more")
    stats = store.stats()
    assert stats["spans"] == 4000 and stats["traces"] == 1000
    assert stats["dropped"] == 40_000 and stats["received"] == 44_000
    assert flooded < full * 1.2  # the memory of a full store, not of everything received
    assert store.trace("req-0") is None and store.trace("req-10999") is not None  # oldest went first
    assert store.find(request_id="req-1000") == []


def _as_protobuf_json(payload: dict[str, Any]) -> dict[str, Any]:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping wants base64 for bytes."""
    for resource in payload["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for s in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in s:
                        s[key] = base64.b64encode(bytes.fromhex(s[key])).decode()
    return payload


def validate_otlp(payload: dict[str, Any]) -> ExportTraceServiceRequest:
    """Parse as the OpenTelemetry protobuf definitions: an unknown field or wrong type raises."""
    message = ExportTraceServiceRequest()
    json_format.ParseDict(_as_protobuf_json(payload), message, ignore_unknown_fields=False)
    return message


def test_otlp_export_validates_against_the_opentelemetry_protobuf() -> None:
    spans = three_hop_trace(7, status="503")
    message = validate_otlp(otlp_json(spans))
    by_service = {r.resource.attributes[0].value.string_value: r for r in message.resource_spans}
    assert sorted(by_service) == ["productpage.default", "ratings.default", "reviews.default"]
    ratings = by_service["ratings.default"].scope_spans[0].spans[0]
    assert ratings.trace_id.hex() == f"{7:032x}" and ratings.parent_span_id.hex() == f"{3:016x}"
    assert ratings.kind == ratings.SPAN_KIND_SERVER
    assert ratings.end_time_unix_nano - ratings.start_time_unix_nano == 1_000_000
    assert ratings.status.code == ratings.status.STATUS_CODE_ERROR
    attributes = {a.key: a.value.string_value for a in ratings.attributes}
    assert attributes["istio.canonical_service"] == "ratings" and attributes["http.status_code"] == "503"
    client = by_service["productpage.default"].scope_spans[0].spans[0]
    assert client.kind == client.SPAN_KIND_CLIENT and client.parent_span_id == b""


async def test_api_takes_spans_answers_queries_and_exports(control_plane: RunningControlPlane,
                                                           session: aiohttp.ClientSession) -> None:
    url = control_plane.url + API
    async with session.post(f"{url}/spans", json=three_hop_trace(1) + three_hop_trace(2, slow_ms=300)) as r:
        assert r.status == 202 and (await r.json())["stored"] == 8
    async with session.post(f"{url}/spans", data=b"[{", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
    async with session.get(url, params={"min_duration": "250ms"}) as r:
        answer = await r.json()
        assert [t["trace_id"] for t in answer["traces"]] == [f"{2:032x}"]
        assert answer["stats"]["spans"] == 8
    async with session.get(url, params={"min_duration": "soon"}) as r:
        assert r.status == 400 and "min_duration" in await r.text()
    async with session.get(f"{url}/req-1") as r:
        assert [s["id"] for s in (await r.json())["spans"]] == [f"{i:016x}" for i in (1, 2, 3, 4)]
    async with session.get(f"{url}/{2:032x}/otlp") as r:
        validate_otlp(await r.json())
    async with session.get(f"{url}/{2:032x}/zipkin") as r:
        assert len(await r.json()) == 4
    async with session.get(f"{url}/{'f' * 32}") as r:
        assert r.status == 404 and "not among the collector's recent traces" in await r.text()


@pytest.fixture
async def backend() -> AsyncIterator[tuple[str, list[Any]]]:
    """A stand-in tracing backend: records every POSTed JSON body."""
    received: list[Any] = []

    async def take(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", take)
    app.router.add_post("/api/v2/spans", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("fmt", "path"), [("otlp", "/v1/traces"), ("zipkin", "/api/v2/spans")])
async def test_exporter_forwards_stored_spans_to_a_backend(backend: tuple[str, list[Any]], fmt: str,
                                                           path: str) -> None:
    base, received = backend
    exporter = TraceExporter(base + path, fmt, interval=0.05)
    store = TraceStore()
    store.listeners.append(exporter)
    exporter.start()
    try:
        store.add(three_hop_trace(1))
        await eventually(lambda: exporter.exported, lambda n: n == 4, seconds=10.0)
    finally:
        await exporter.close()
    assert exporter.exported == 4 and exporter.dropped == 0
    if fmt == "otlp":
        assert sum(len(r.scope_spans[0].spans) for r in validate_otlp(received[0]).resource_spans) == 4
    else:
        assert [s["id"] for s in received[0]] == [f"{i:016x}" for i in (1, 2, 3, 4)]


def test_mesh_sampling_and_export_settings_are_checked() -> None:
    from meshkit.control.server import parse_trace_sampling, trace_exporter  # noqa: PLC0415

    assert parse_trace_sampling(None) == 1.0 and parse_trace_sampling("100") == 100.0
    for bad in ("150", "-1", "often"):
        with pytest.raises(ValueError, match="MESHKIT_TRACE_SAMPLING"):
            parse_trace_sampling(bad)
    assert trace_exporter(None) is None
    exporter = trace_exporter("zipkin=http://127.0.0.1:9411/api/v2/spans")
    assert exporter is not None and exporter.format == "zipkin"
    for bad in ("http://127.0.0.1:4318", "jaeger=http://127.0.0.1:14268", "otlp=127.0.0.1:4318"):
        with pytest.raises(ValueError):
            trace_exporter(bad)
