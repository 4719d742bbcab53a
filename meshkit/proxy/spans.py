"""Spans of sampled requests: a bounded in-sidecar buffer, shipped in batches off the request path.

The tracing filter hands `SpanRecorder.record` one finished request: it appends a small tuple to a
``deque`` of fixed capacity (the oldest span is dropped, and counted, when the collector is slower
than the traffic) and returns. Nothing is formatted per request. `SpanRecorder.ship` is the
background task: every ``interval`` seconds it turns what is buffered into Zipkin v2 JSON spans
(the format Istio's Zipkin tracer sends, tagged as Envoy tags Istio's spans) and hands the batch to
``post`` (the sidecar's control-plane client, so the same connection rules and credentials as its
xDS calls apply). A batch the collector refuses or cannot take is dropped and counted, never
retried in a loop that could grow memory.

Must not: import anything outside the proxy's leaf dependencies (no OpenTelemetry here), block the
event loop, or keep more than ``capacity`` spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from meshkit.proxy.http import Request, Response

log = logging.getLogger("meshkit.proxy.spans")

SPANS_PATH = "/api/v1/traces/spans"
CAPACITY = 4096
BATCH = 1000
INTERVAL = 1.0
MAX_TAG = 256  # characters kept of a tag value (a path can be long)

Post = Callable[[str, bytes], Awaitable[int]]  # (path, JSON body) -> HTTP status (0: not delivered)

# A finished request, reduced to what a span needs (the request itself is not kept: its body may be big).
SpanRecord = tuple[Any, ...]

class SpanRecorder:
    """Bounded span buffer of one sidecar plus its shipping loop (see the module docstring)."""

    def __init__(self, node_id: str, capacity: int = CAPACITY, batch: int = BATCH,
                 interval: float = INTERVAL) -> None:
        self.node_id = node_id
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self._buffer: deque[SpanRecord] = deque(maxlen=capacity)
        self.recorded = 0
        self.dropped = 0  # overwritten in the buffer, or in a batch the collector did not take
        self.shipped = 0
        self.batches_failed = 0

    def record(  # noqa: PLR0917 (called once per sampled request: positional is cheaper)
        self, kind: str, trace_id: str, span_id: str, parent_id: str,
               request: Request, response: Response | None, status: int, sent: int) -> None:
        """One finished request (called by the tracing filter: a tuple appended, nothing formatted)."""
        duration = time.monotonic() - request.start
        request_id = user_agent = None
        for name, value in request.headers.items():
            if name == "x-request-id":
                request_id = request_id if request_id is not None else value
            elif name == "user-agent" and user_agent is None:
                user_agent = value
        flags = request.flags
        upstream_host = ""
        if response is not None:
            upstream_host = response.upstream_host
            if response.flags:
                flags = f"{flags},{response.flags}" if flags else response.flags
        if not upstream_host and request.endpoint is not None:
            upstream_host = getattr(request.endpoint, "hostport", "") or ""
        body = request.body
        size = len(body) if isinstance(body, bytes) else int(getattr(body, "bytes_received", 0))
        buffer = self._buffer
        if len(buffer) == self.capacity:
            self.dropped += 1  # the deque drops the oldest on append
        buffer.append((kind, trace_id, span_id, parent_id, time.time() - duration, duration,
                       request.config, request.method, request.authority, request.path, request.version,
                       status, flags, request.cluster, upstream_host, request.downstream_addr,
                       request.peer_identity, request_id, user_agent, size, sent, request.route,
                       request.attempt))
        self.recorded += 1

    def pending(self) -> int:
        return len(self._buffer)

    def stats(self) -> dict[str, int]:
        return {"recorded": self.recorded, "shipped": self.shipped, "dropped": self.dropped,
                "buffered": len(self._buffer), "capacity": self.capacity,
                "batches_failed": self.batches_failed}

    def take(self) -> list[dict[str, Any]]:
        """Up to ``batch`` buffered spans, oldest first, as Zipkin v2 JSON objects."""
        buffer = self._buffer
        count = min(len(buffer), self.batch)
        return [zipkin_span(buffer.popleft(), self.node_id) for _ in range(count)]

    async def ship(self, post: Post) -> None:
        """Forever: every ``interval`` seconds send what is buffered (cancel to stop)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.flush(post)

    async def flush(self, post: Post) -> None:
        while self._buffer:
            spans = self.take()
            body = json.dumps(spans, separators=(",", ":")).encode()
            try:
                status = await post(SPANS_PATH, body)
            except (OSError, TimeoutError) as exc:
                status = 0
                log.info("could not ship %d spans: %s", len(spans), exc)
            if 200 <= status < 300:
                self.shipped += len(spans)
            else:
                self.dropped += len(spans)
                self.batches_failed += 1
                return  # try again next interval with what arrived since


def _cut(value: str | None) -> str:
    if value is None:
        return ""
    return value if len(value) <= MAX_TAG else value[:MAX_TAG]


def route_tags(route: dict[str, Any], attempts: int) -> dict[str, str]:
    """What the route step chose, for ``meshkit explain``: the rule (``VirtualService/ns/name#http[i]``
    or ``default``), its fault, timeout and the attempts made (1 + retries)."""
    tags = {"meshkit.route": str(route.get("source") or "-"),
            "meshkit.route_name": str(route.get("name") or "-"), "retry.attempts": str(attempts)}
    timeout = route.get("timeout_ms")
    if timeout is not None:
        tags["meshkit.timeout_ms"] = str(timeout)
    fault = route.get("fault") or {}
    parts = []
    if delay := fault.get("delay"):
        parts.append(f"delay {delay.get('fixed_delay_ms')} ms for {delay.get('percent', 100):g}%")
    if abort := fault.get("abort"):
        parts.append(f"abort {abort.get('http_status')} for {abort.get('percent', 100):g}%")
    if parts:
        tags["meshkit.fault"] = "; ".join(parts)
    return tags


def operation_name(kind: str, config: Any, authority: str) -> str:
    """Istio's route decorator: ``<service FQDN>:<port>/*`` (inbound), ``<authority>/*`` (outbound)."""
    if kind == "SERVER" and config is not None:
        fqdn = getattr(config, "inbound_service_fqdn", "unknown")
        port = (getattr(config, "inbound", None) or {}).get("service_port")
        if fqdn != "unknown":
            return f"{fqdn}:{port}/*" if port else f"{fqdn}/*"
    return f"{authority}/*"


def zipkin_span(record: SpanRecord, node_id: str) -> dict[str, Any]:
    """A buffered record as a Zipkin v2 span with Istio's (Envoy's) tags."""
    (kind, trace_id, span_id, parent_id, start, duration, config, method, authority, path, version,
     status, flags, cluster, upstream_host, peer_address, peer_identity, request_id, user_agent,
     request_size, sent, route, attempts) = record
    labels = getattr(config, "node_labels", None)
    service = getattr(labels, "app", "unknown")
    namespace = getattr(labels, "namespace", "unknown")
    if kind == "SERVER":
        mtls = peer_identity is not None
    else:
        mtls = cluster is not None and cluster in (getattr(config, "upstream_tls", None) or {})
    tags = {
        "component": "proxy",
        "node_id": node_id,
        "istio.canonical_service": service,
        "istio.canonical_revision": getattr(labels, "version", "unknown"),
        "istio.namespace": namespace,
        "istio.mesh_id": "cluster.local",
        "http.method": method,
        "http.url": _cut(f"http://{authority}{path}"),
        "http.protocol": f"HTTP/{version}",
        "http.status_code": str(status),
        "response_flags": flags or "-",
        "upstream_cluster": cluster or "-",
        "upstream_cluster.name": cluster or "-",
        "peer.address": peer_address or "-",
        "request_size": str(request_size),
        "response_size": str(sent),
        "guid:x-request-id": _cut(request_id),
        "user_agent": _cut(user_agent),
        "downstream_cluster": "-",
        "connection_security_policy": "mutual_tls" if mtls else "none",
    }
    if peer_identity:
        tags["peer.identity"] = peer_identity
    if kind == "CLIENT" and isinstance(route, dict):
        tags.update(route_tags(route, attempts))
    if status == 0 or status >= 500:
        tags["error"] = "true"
    span: dict[str, Any] = {
        "traceId": trace_id,
        "id": span_id,
        "kind": kind,
        "name": _cut(operation_name(kind, config, authority)),
        "timestamp": int(start * 1_000_000),
        "duration": max(1, int(duration * 1_000_000)),
        "localEndpoint": {"serviceName": f"{service}.{namespace}"},
        "tags": tags,
    }
    if parent_id:
        span["parentId"] = parent_id
    if upstream_host and kind == "CLIENT":
        host, _, port = upstream_host.rpartition(":")
        remote: dict[str, Any] = {"ipv4": host} if host.count(".") == 3 else {}
        with contextlib.suppress(ValueError):
            remote["port"] = int(port)
        if remote:
            span["remoteEndpoint"] = remote
    return span
