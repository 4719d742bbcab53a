"""The trace collector: spans from every sidecar, recent traces kept in bounded memory, queries, export.

Sidecars post Zipkin v2 JSON spans (``meshkit.proxy.spans``). `TraceStore.add` validates each span
(a malformed one is rejected and counted, never stored), keeps only the fields a trace view needs
(string tags cut to `MAX_TAG` characters, at most `MAX_TAGS` tags), groups spans by trace id and
indexes them by ``x-request-id``. Memory is bounded by a span count: past ``max_spans`` the oldest
traces (by first arrival) are dropped whole, and every dropped span is counted.

Queries (`TraceStore.find`) answer by service, minimum duration, error and request id with one
summary per trace; `TraceStore.trace` gives a trace's spans. Export: `zipkin_json` (Zipkin v2, what
Istio's Zipkin tracer sends) and `otlp_json` (OTLP/HTTP JSON, ``ExportTraceServiceRequest``), the two
formats Istio supports; `TraceExporter` forwards every stored span to such a backend in batches.

Pure data apart from `TraceExporter` (aiohttp); must not block: every operation is proportional to
the spans it touches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import aiohttp

log = logging.getLogger("meshkit.control.traces")

MAX_SPANS = 20_000  # stored spans (~2 KiB each with Istio's tags: ~40 MiB at most)
MAX_TAG = 256
MAX_TAGS = 48
MAX_NAME = 256
_HEX = re.compile(r"^[0-9a-f]+$")
KINDS = ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")
OTLP_KIND = {"SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}  # Span.SpanKind


class SpanError(ValueError):
    """A span the collector does not store; the message names the field."""


def _hex_id(span: dict[str, Any], key: str, lengths: tuple[int, ...]) -> str:
    value = span.get(key)
    if not isinstance(value, str) or len(value) not in lengths or not _HEX.match(value.lower()):
        raise SpanError(f"{key}: expected {' or '.join(map(str, lengths))} hex digits, got {value!r}")
    return value.lower()


def _cut(value: str, limit: int = MAX_TAG) -> str:
    return value if len(value) <= limit else value[:limit]


def normalize(span: Any) -> dict[str, Any]:
    """One Zipkin v2 span reduced to the stored fields (raises SpanError naming the bad field)."""
    if not isinstance(span, dict):
        raise SpanError(f"span: expected an object, got {type(span).__name__}")
    trace_id = _hex_id(span, "traceId", (16, 32)).rjust(32, "0")
    span_id = _hex_id(span, "id", (16,))
    out: dict[str, Any] = {"traceId": trace_id, "id": span_id}
    if span.get("parentId") is not None:
        out["parentId"] = _hex_id(span, "parentId", (16,))
    kind = span.get("kind")
    if kind is not None:
        if kind not in KINDS:
            raise SpanError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        out["kind"] = kind
    name = span.get("name", "")
    if not isinstance(name, str):
        raise SpanError(f"name: expected a string, got {name!r}")
    out["name"] = _cut(name, MAX_NAME)
    for key in ("timestamp", "duration"):
        value = span.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpanError(f"{key}: expected microseconds (a non-negative integer), got {value!r}")
        out[key] = value
    for key in ("localEndpoint", "remoteEndpoint"):
        endpoint = span.get(key)
        if endpoint is None:
            continue
        if not isinstance(endpoint, dict):
            raise SpanError(f"{key}: expected an object, got {endpoint!r}")
        kept: dict[str, str | int] = {k: _cut(v, 128) for k, v in endpoint.items()
                                      if k in ("serviceName", "ipv4", "ipv6") and isinstance(v, str)}
        port = endpoint.get("port")
        if isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535:
            kept["port"] = port
        out[key] = kept
    tags = span.get("tags") or {}
    if not isinstance(tags, dict):
        raise SpanError(f"tags: expected an object of strings, got {tags!r}")
    out["tags"] = {_cut(str(k), 64): _cut(v) for k, v in list(tags.items())[:MAX_TAGS] if isinstance(v, str)}
    return out


def service_of(span: dict[str, Any]) -> str:
    """``istio.canonical_service`` of the span's proxy, else its Zipkin service name."""
    tags = span.get("tags") or {}
    return tags.get("istio.canonical_service") or (span.get("localEndpoint") or {}).get("serviceName", "")


def is_error(span: dict[str, Any]) -> bool:
    return (span.get("tags") or {}).get("error") == "true"


class TraceStore:
    """Recent traces in bounded memory (see the module docstring). Pure data: no I/O."""

    def __init__(self, max_spans: int = MAX_SPANS) -> None:
        self.max_spans = max_spans
        self._traces: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._by_request: dict[str, str] = {}
        self.spans = 0  # stored now
        self.received = 0
        self.rejected = 0  # malformed
        self.dropped = 0  # evicted to stay within max_spans
        self.listeners: list[Any] = []  # callables given each batch of stored spans (exporters)

    def add(self, spans: Iterable[Any]) -> tuple[int, list[str]]:
        """Store ``spans``; returns (stored, error messages of those rejected)."""
        stored: list[dict[str, Any]] = []
        errors: list[str] = []
        for index, raw in enumerate(spans):
            self.received += 1
            try:
                span = normalize(raw)
            except SpanError as exc:
                self.rejected += 1
                if len(errors) < 10:
                    errors.append(f"spans[{index}].{exc}")
                continue
            trace = self._traces.get(span["traceId"])
            if trace is None:
                trace = self._traces[span["traceId"]] = []
            trace.append(span)
            self.spans += 1
            request_id = span["tags"].get("guid:x-request-id")
            if request_id:
                self._by_request[request_id] = span["traceId"]
            stored.append(span)
        self._evict()
        for listener in self.listeners:
            listener(stored)
        return len(stored), errors

    def _evict(self) -> None:
        while self.spans > self.max_spans and self._traces:
            trace_id, spans = self._traces.popitem(last=False)
            self.spans -= len(spans)
            self.dropped += len(spans)
            for span in spans:
                request_id = span["tags"].get("guid:x-request-id")
                if request_id and self._by_request.get(request_id) == trace_id:
                    del self._by_request[request_id]

    def stats(self) -> dict[str, int]:
        return {"traces": len(self._traces), "spans": self.spans, "max_spans": self.max_spans,
                "received": self.received, "rejected": self.rejected, "dropped": self.dropped}

    def trace(self, trace_id: str) -> list[dict[str, Any]] | None:
        """The spans of one trace, by start time (a trace id or an x-request-id)."""
        key = trace_id.lower().rjust(32, "0") if _HEX.match(trace_id.lower()) else trace_id
        spans = self._traces.get(key)
        if spans is None:
            found = self._by_request.get(trace_id)
            spans = self._traces.get(found) if found else None
        if spans is None:
            return None
        return sorted(spans, key=lambda s: (s["timestamp"], s.get("kind") != "CLIENT"))

    def find(self, service: str | None = None, errors: bool = False, min_duration: float = 0.0,
             request_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Summaries of the newest traces that match every given condition (``min_duration`` in s)."""
        if request_id:
            trace_id = self._by_request.get(request_id)
            known = trace_id is not None and trace_id in self._traces
            candidates: Iterable[str] = [trace_id] if known and trace_id is not None else []
        else:
            candidates = reversed(self._traces)
        answer = []
        for trace_id in candidates:
            summary = summarize(trace_id, self._traces[trace_id])
            if service and service not in summary["services"] and not any(
                s.startswith(service + ".") for s in summary["services"]
            ):
                continue
            if errors and not summary["error"]:
                continue
            if summary["duration_ms"] < min_duration * 1000.0:
                continue
            answer.append(summary)
            if len(answer) >= limit:
                break
        return answer


def summarize(trace_id: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    """One line about a trace: its root, services, duration and whether a span failed."""
    start = min(s["timestamp"] for s in spans)
    end = max(s["timestamp"] + s["duration"] for s in spans)
    ids = {s["id"] for s in spans}
    roots = [s for s in spans if s.get("parentId") not in ids]
    root = min(roots or spans, key=lambda s: s["timestamp"])
    request_ids = sorted({s["tags"].get("guid:x-request-id", "") for s in spans} - {""})
    return {
        "trace_id": trace_id,
        "start_us": start,
        "duration_ms": (end - start) / 1000.0,
        "spans": len(spans),
        "services": sorted({service_of(s) for s in spans} - {""}),
        "root": {"service": service_of(root), "name": root.get("name", ""),
                 "status": root["tags"].get("http.status_code", "")},
        "error": any(is_error(s) for s in spans),
        "request_ids": request_ids[:5],
    }


# ---------------------------------------------------------------------------------------------
# export formats
# ---------------------------------------------------------------------------------------------


def zipkin_json(spans: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Zipkin v2 JSON (``POST /api/v2/spans`` of a Zipkin server): the stored spans as they are."""
    return [dict(s) for s in spans]


def _attribute(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def otlp_span(span: dict[str, Any]) -> dict[str, Any]:
    """One span in OTLP JSON (ids hex, times as decimal strings of nanoseconds, as OTLP/HTTP wants)."""
    start = span["timestamp"] * 1000
    tags = span.get("tags") or {}
    out: dict[str, Any] = {
        "traceId": span["traceId"],
        "spanId": span["id"],
        "name": span.get("name", ""),
        "kind": OTLP_KIND.get(span.get("kind", ""), 1),
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + span["duration"] * 1000),
        "attributes": [_attribute(k, v) for k, v in sorted(tags.items())],
        "status": {"code": 2, "message": f"HTTP {tags.get('http.status_code', '')}"} if is_error(span)
        else {"code": 0},
    }
    if span.get("parentId"):
        out["parentSpanId"] = span["parentId"]
    remote = span.get("remoteEndpoint") or {}
    if remote.get("ipv4"):
        out["attributes"].append(_attribute("net.peer.ip", remote["ipv4"]))
    return out


def otlp_json(spans: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """An OTLP ``ExportTraceServiceRequest`` in JSON: one resource per proxy (service.name)."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        name = (span.get("localEndpoint") or {}).get("serviceName") or service_of(span) or "unknown"
        by_service.setdefault(name, []).append(span)
    return {"resourceSpans": [
        {
            "resource": {"attributes": [_attribute("service.name", name)]},
            "scopeSpans": [{"scope": {"name": "meshkit-proxy"}, "spans": [otlp_span(s) for s in group]}],
        }
        for name, group in sorted(by_service.items())
    ]}


class TraceExporter:
    """Forwards stored spans to a tracing backend: ``otlp`` (OTLP/HTTP JSON) or ``zipkin`` (v2 JSON).

    Spans wait in a bounded queue (oldest dropped first, counted) and leave in batches once a
    second; a backend that is down costs dropped batches, never memory.
    """

    def __init__(self, url: str, fmt: str, capacity: int = 10_000, batch: int = 1000,
                 interval: float = 1.0) -> None:
        if fmt not in ("otlp", "zipkin"):
            raise ValueError(f"trace export format: expected otlp or zipkin, got {fmt!r}")
        self.url = url
        self.format = fmt
        self.batch = batch
        self.interval = interval
        self._queue: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.exported = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def __call__(self, spans: list[dict[str, Any]]) -> None:
        overflow = len(self._queue) + len(spans) - (self._queue.maxlen or 0)
        if overflow > 0:
            self.dropped += overflow
        self._queue.extend(spans)

    def payload(self, spans: list[dict[str, Any]]) -> Any:
        return otlp_json(spans) if self.format == "otlp" else zipkin_json(spans)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                await asyncio.sleep(self.interval)
                while self._queue:
                    batch = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                    try:
                        async with session.post(self.url, json=self.payload(batch)) as response:
                            if response.status >= 300:
                                raise aiohttp.ClientError(f"{self.url} answered {response.status}")
                        self.exported += len(batch)
                        self.last_error = None
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        self.dropped += len(batch)
                        self.last_error = str(exc)
                        log.info("trace export to %s failed: %s", self.url, exc)
                        break
