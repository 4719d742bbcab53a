"""Tracing headers, access log lines and Istio metrics as a scraper sees them."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from meshkit.proxy.filters.tracing import new_request_id, propagate
from meshkit.proxy.http import Headers
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot
from tests.waiting import async_wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_traceparent_keeps_trace_and_gets_new_span() -> None:
    headers = Headers([("traceparent", f"00-{TRACE}-{PARENT}-01"), ("tracestate", "vendor=x")])
    propagate(headers)
    version, trace, span, flags = headers.get("traceparent").split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert span != PARENT and len(span) == 16
    assert headers.get("x-b3-traceid") == TRACE
    assert headers.get("x-b3-spanid") == span
    assert headers.get("x-b3-parentspanid") == PARENT
    assert headers.get("tracestate") == "vendor=x"
    assert len(headers.get_all("traceparent")) == 1


def test_b3_only_and_no_context() -> None:
    headers = Headers([("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312"),
                       ("x-b3-sampled", "0")])
    propagate(headers)
    trace = headers.get("traceparent").split("-")
    assert trace[1] == "0000000000000000463ac35c9f6413ad" and trace[3] == "00"
    assert headers.get("x-b3-parentspanid") == "a2fb4a1d1a96d312"
    fresh = Headers()
    propagate(fresh)
    assert fresh.get("x-request-id") is not None
    _, trace_id, span_id, flags = fresh.get("traceparent").split("-")
    assert len(trace_id) == 32 and len(span_id) == 16 and flags == "01"
    broken = Headers([("traceparent", "garbage"), ("x-request-id", "keep-me")])
    propagate(broken)
    assert broken.get("traceparent") != "garbage" and broken.get("x-request-id") == "keep-me"


def test_request_ids_are_uuid4_shaped_and_distinct() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    sample = ids.pop()
    assert [len(p) for p in sample.split("-")] == [8, 4, 4, 4, 12] and sample[14] == "4"


async def test_trace_and_access_log_across_two_hops(
    echo_app: EchoApp, start_proxy: StartProxy, tmp_path: Path
) -> None:
    log_b = tmp_path / "b.log"
    log_a = tmp_path / "a.log"
    b = await start_proxy(make_snapshot(echo_app.port), "--access-log", str(log_b))
    a = await start_proxy(make_snapshot(b.ports["inbound"]), "--access-log", str(log_a))
    async with aiohttp.ClientSession() as session:
        headers = {"Host": "reviews", "traceparent": f"00-{TRACE}-{PARENT}-01", "x-request-id": "rid-1",
                   "User-Agent": "test-agent"}
        async with session.post(f"http://127.0.0.1:{a.ports['outbound']}/r?x=1", data=b"12345",
                                headers=headers) as resp:
            info = await resp.json()
        nowhere = f"http://127.0.0.1:{a.ports['outbound']}/x"
        async with session.get(nowhere, headers={"Host": "nowhere"}) as resp:
            assert resp.status == 404
    seen = dict(info["headers"])
    assert seen["x-request-id"] == "rid-1"
    assert seen["traceparent"].split("-")[1] == TRACE
    assert seen["x-b3-parentspanid"] not in (PARENT, seen["x-b3-spanid"])  # two hops: two new spans
    # lines are flushed once per loop iteration: wait for a's two requests and b's one
    await async_wait_until(lambda: len(log_a.read_text().splitlines()) >= 2, 10, "proxy a's access log lines")
    await async_wait_until(lambda: log_b.read_text().splitlines(), 10, "proxy b's access log line")
    lines_a = [json.loads(line) for line in log_a.read_text().splitlines()]
    lines_b = [json.loads(line) for line in log_b.read_text().splitlines()]
    first = lines_a[0]
    assert first["method"] == "POST" and first["path"] == "/r?x=1" and first["authority"] == "reviews"
    assert first["status"] == 200 and first["response_flags"] == "-" and first["direction"] == "outbound"
    assert first["upstream_cluster"] == "reviews|"
    assert first["upstream_host"] == f"127.0.0.1:{b.ports['inbound']}"
    assert first["request_id"] == "rid-1" and first["user_agent"] == "test-agent"
    assert first["bytes_received"] == 5 and first["bytes_sent"] > 100
    assert first["protocol"] == "HTTP/1.1" and first["start_time"].endswith("Z") and first["duration_ms"] >= 0
    assert lines_a[1]["status"] == 404 and lines_a[1]["response_flags"] == "NR"
    assert lines_b[0]["direction"] == "inbound" and lines_b[0]["request_id"] == "rid-1"
    assert lines_b[0]["x_forwarded_for"] == "127.0.0.1, 127.0.0.1"
    assert set(first) == {
        "start_time", "method", "path", "authority", "protocol", "status", "response_flags", "duration_ms",
        "upstream_host", "upstream_cluster", "route_name", "request_id", "bytes_received", "bytes_sent",
        "user_agent", "x_forwarded_for", "direction",
    }


def _samples(text: str, name: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


async def test_istio_metrics_both_reporters(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    b = await start_proxy(make_snapshot(echo_app.port))
    a = await start_proxy(make_snapshot(b.ports["inbound"]))
    async with aiohttp.ClientSession() as session:
        for path in ("/ok", "/status/500", "/bytes/150000", "/stream/40"):
            async with session.get(f"http://127.0.0.1:{a.ports['outbound']}{path}",
                                   headers={"Host": "reviews"}) as resp:
                await resp.read()
        async with session.put(f"http://127.0.0.1:{a.ports['outbound']}/up", data=b"u" * 3000,
                               headers={"Host": "reviews"}) as resp:
            await resp.read()
    source = _samples(a.metrics.render(), "istio_requests_total")
    by_code = {s.labels["response_code"]: s for s in source}
    assert by_code["200"].value == 4 and by_code["500"].value == 1
    labels = by_code["500"].labels
    assert labels["reporter"] == "source" and labels["connection_security_policy"] == "unknown"
    assert labels["destination_workload"] == "reviews-v1" and labels["destination_app"] == "reviews"
    assert labels["destination_service_name"] == "reviews" and labels["request_protocol"] == "http"
    # Istio's canonical service/revision and cluster labels (istio.io standard metrics).
    canonical = [labels[f"{side}_canonical_{what}"] for side in ("source", "destination")
                 for what in ("service", "revision")]
    assert canonical == ["productpage", "v1", "reviews", "v1"]
    assert labels["source_cluster"] == labels["destination_cluster"] == "Kubernetes"
    dest = _samples(b.metrics.render(), "istio_requests_total")
    dlabels = next(s.labels for s in dest if s.labels["response_code"] == "500")
    # Plaintext between the sidecars: nothing the caller sends is trusted for telemetry (issue 15),
    # so the destination reports an unknown source (over mTLS: tests/security/test_e2e_mtls.py).
    assert dlabels["reporter"] == "destination" and dlabels["source_workload"] == "unknown"
    assert dlabels["source_app"] == "unknown" and dlabels["source_version"] == "unknown"
    assert dlabels["source_principal"] == "unknown"
    assert dlabels["source_canonical_service"] == "unknown"
    assert dlabels["source_canonical_revision"] == "latest"
    assert (dlabels["source_cluster"], dlabels["destination_cluster"]) == ("unknown", "Kubernetes")
    assert (dlabels["destination_canonical_service"], dlabels["destination_canonical_revision"]) == (
        "productpage", "v1"
    )
    assert dlabels["destination_service"] == "productpage.default.svc.cluster.local"
    assert dlabels["connection_security_policy"] == "none"
    # Bytes histograms: streamed bodies are counted when they end.
    resp_sum = sum(s.value for s in _samples(a.metrics.render(), "istio_response_bytes_sum"))
    assert resp_sum >= 150000 + 40 * 1024
    req_sum = sum(s.value for s in _samples(a.metrics.render(), "istio_request_bytes_sum"))
    assert req_sum == 3000
    buckets = [s for s in _samples(a.metrics.render(), "istio_request_duration_milliseconds_bucket")
               if s.labels["response_code"] == "500"]
    assert [b.labels["le"] for b in buckets][:3] == ["0.5", "1", "5"] and buckets[-1].value == 1
