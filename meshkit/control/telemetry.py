"""Telemetry: scrape every sidecar's Istio metrics each second, keep a rolling window, answer queries.

The sidecars expose ``/stats/prometheus`` with Istio's metric names and labels; this module is a
very small Prometheus of its own (a real Prometheus can scrape the same endpoints): per scrape
target it keeps the cumulative values of ``istio_requests_total`` and of the
``istio_request_duration_milliseconds`` buckets, one sample a second for `RETENTION` seconds, and
answers RED queries per *edge* (source workload -> destination service/version) by differencing
two samples, exactly as ``rate()`` and ``histogram_quantile()`` would.

Which reporter describes an edge: the source sidecar's (``reporter="source"``) whenever the caller
has a sidecar, since only it sees faults injected before a request leaves; the destination's for
callers outside the mesh (``source_workload="unknown"``), which only the server side sees.

`TelemetryStore` is pure data (tested without sockets); `Scraper` is the aiohttp loop around it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("meshkit.control.telemetry")

RETENTION = 20 * 60.0  # seconds of history kept (Istio's lessons look back 15 min at most)
SCRAPE_INTERVAL = 1.0
QUANTILES = (0.5, 0.9, 0.99)

# The labels an edge is keyed by (a subset of Istio's), in this order.
EDGE_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "destination_service_name",
    "destination_service_namespace",
    "destination_workload",
    "destination_version",
)
REQUEST_LABELS = (*EDGE_LABELS, "response_code", "response_flags", "connection_security_policy")

RequestKey = tuple[str, ...]  # values of REQUEST_LABELS
BucketKey = tuple[tuple[str, ...], float]  # (values of EDGE_LABELS, le)


@dataclass
class Sample:
    """Cumulative values of one target at one scrape."""

    t: float
    requests: dict[RequestKey, float]
    buckets: dict[BucketKey, float]


def parse_scrape(text: str) -> tuple[dict[RequestKey, float], dict[BucketKey, float]]:
    """Pick the series telemetry needs out of a Prometheus text exposition."""
    requests: dict[RequestKey, float] = {}
    buckets: dict[BucketKey, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("istio_requests", "istio_requests_total"):  # typed counters lose _total
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = tuple(s.labels.get(k, "") for k in REQUEST_LABELS)
                    requests[key] = requests.get(key, 0.0) + s.value
        elif family.name == "istio_request_duration_milliseconds":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    bkey = (tuple(s.labels.get(k, "") for k in EDGE_LABELS), le)
                    buckets[bkey] = buckets.get(bkey, 0.0) + s.value
    return requests, buckets


@dataclass
class Edge:
    """Traffic from one source workload to one destination service version over a window."""

    reporter: str
    source_workload: str
    source_namespace: str
    destination_service: str
    destination_namespace: str
    destination_workload: str
    destination_version: str
    requests: float = 0.0
    errors: float = 0.0  # 5xx, plus no-response failures (code 0)
    codes: dict[str, float] = field(default_factory=dict)
    flags: dict[str, float] = field(default_factory=dict)
    mtls: float = 0.0  # requests seen as mutual_tls
    buckets: dict[float, float] = field(default_factory=dict)

    def to_dict(self, seconds: float) -> dict[str, Any]:
        q = {f"p{round(x * 100)}": histogram_quantile(x, self.buckets) for x in QUANTILES}
        return {
            "reporter": self.reporter,
            "source_workload": self.source_workload,
            "source_namespace": self.source_namespace,
            "destination_service": self.destination_service,
            "destination_namespace": self.destination_namespace,
            "destination_workload": self.destination_workload,
            "destination_version": self.destination_version,
            "requests": round(self.requests),
            "rps": self.requests / seconds if seconds > 0 else 0.0,
            "error_rate": self.errors / self.requests if self.requests else 0.0,
            "codes": {k: round(v) for k, v in sorted(self.codes.items()) if v},
            "flags": {k: round(v) for k, v in sorted(self.flags.items()) if v},
            "mtls": bool(self.requests) and self.mtls >= self.requests * 0.5,
            "latency_ms": q,
        }


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative bucket counts (``le`` -> count)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    i = bisect.bisect_left([buckets[b] for b in bounds], rank)
    i = min(i, len(bounds) - 1)
    upper = bounds[i]
    if upper == float("inf"):
        return bounds[i - 1] if i > 0 else None
    lower = bounds[i - 1] if i > 0 else 0.0
    below = buckets[bounds[i - 1]] if i > 0 else 0.0
    in_bucket = buckets[upper] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def _delta(new: float, old: float | None) -> float:
    """Counter increase; a counter that went down was reset (the sidecar restarted)."""
    if old is None:
        return new
    return new - old if new >= old else new


class TelemetryStore:
    """Rolling per-target samples and the queries over them. Pure data: no I/O."""

    def __init__(self, retention: float = RETENTION) -> None:
        self.retention = retention
        self._samples: dict[str, deque[Sample]] = {}

    def add(self, target: str, t: float, text: str) -> None:
        requests, buckets = parse_scrape(text)
        ring = self._samples.setdefault(target, deque())
        ring.append(Sample(t, requests, buckets))
        while ring and ring[0].t < t - self.retention:
            ring.popleft()

    def forget(self, target: str) -> None:
        self._samples.pop(target, None)

    def targets(self) -> list[str]:
        return sorted(self._samples)

    def _pairs(self, start: float, end: float) -> Iterable[tuple[Sample | None, Sample]]:
        """For each target: (the last sample at or before ``start``, or None; the last one by ``end``)."""
        for ring in self._samples.values():
            newest = next((s for s in reversed(ring) if s.t <= end), None)
            if newest is None:
                continue
            oldest = next((s for s in reversed(ring) if s.t <= start), None)
            if oldest is newest:
                continue
            if oldest is None and ring[0].t > start:
                # The target appeared inside the window: everything it counted is in the window.
                yield None, newest
            elif oldest is not None:
                yield oldest, newest

    def edges(self, window: float, now: float | None = None) -> tuple[list[Edge], float]:
        """Edges over the last ``window`` seconds; also returns the seconds actually covered."""
        end = now if now is not None else time.time()
        start = end - window
        edges: dict[tuple[str, ...], Edge] = {}
        covered = 0.0
        for old, new in self._pairs(start, end):
            covered = max(covered, new.t - (old.t if old else start))
            for key, value in new.requests.items():
                inc = _delta(value, old.requests.get(key) if old else None)
                if inc <= 0:
                    continue
                edge_key = key[: len(EDGE_LABELS)]
                edge = edges.get(edge_key) or edges.setdefault(edge_key, Edge(*edge_key))
                code, flags, security = key[len(EDGE_LABELS):]
                edge.requests += inc
                edge.codes[code] = edge.codes.get(code, 0.0) + inc
                if code.startswith("5") or code == "0":
                    edge.errors += inc
                if flags not in ("", "-"):
                    edge.flags[flags] = edge.flags.get(flags, 0.0) + inc
                if security == "mutual_tls":
                    edge.mtls += inc
            for (edge_key, le), value in new.buckets.items():
                inc = _delta(value, old.buckets.get((edge_key, le)) if old else None)
                if inc > 0 and edge_key in edges:
                    b = edges[edge_key].buckets
                    b[le] = b.get(le, 0.0) + inc
        return list(edges.values()), covered or window

    def query(self, window: float = 60.0, now: float | None = None, reporter: str | None = None,
              source: str | None = None, destination: str | None = None) -> dict[str, Any]:
        """The ``/api/v1/telemetry`` answer: per-edge RED metrics over ``window`` seconds."""
        edges, seconds = self.edges(window, now)
        chosen = [e for e in edges if _keep(e, reporter)]
        if source:
            chosen = [e for e in chosen if e.source_workload == source]
        if destination:
            chosen = [e for e in chosen if destination in (e.destination_service, e.destination_workload)]
        chosen.sort(key=lambda e: (e.source_workload, e.destination_service, e.destination_version))
        return {"window": window, "seconds": seconds, "edges": [e.to_dict(seconds) for e in chosen]}

    def graph(self, window: float = 60.0, now: float | None = None) -> dict[str, Any]:
        """A Kiali-like service graph: workload and service nodes, edges with rate, errors, mTLS."""
        answer = self.query(window, now)
        nodes: dict[str, dict[str, Any]] = {}
        links = []
        for e in answer["edges"]:
            src = e["source_workload"]
            dst = e["destination_workload"] if e["destination_workload"] not in ("", "unknown") \
                else e["destination_service"]
            nodes.setdefault(src, {"id": src, "kind": "workload", "namespace": e["source_namespace"]})
            nodes.setdefault(dst, {"id": dst, "kind": "workload", "service": e["destination_service"],
                                   "version": e["destination_version"],
                                   "namespace": e["destination_namespace"]})
            links.append({"source": src, "target": dst, "rps": e["rps"], "error_rate": e["error_rate"],
                          "mtls": e["mtls"], "p99": e["latency_ms"]["p99"], "flags": e["flags"]})
        return {"window": window, "nodes": sorted(nodes.values(), key=lambda n: n["id"]), "edges": links}

    def series(self, window: float = 60.0, step: float = 1.0, now: float | None = None,
               destination: str | None = None) -> dict[str, Any]:
        """Per-step request rates by destination version (for the live traffic-split chart)."""
        end = now if now is not None else time.time()
        points = []
        t = end - window
        while t < end - 1e-9:
            edges, seconds = self.edges(step, now=t + step)
            by_version: dict[str, float] = {}
            errors = 0.0
            for e in edges:
                if not _keep(e, None) or (destination and e.destination_service != destination):
                    continue
                by_version[e.destination_version] = by_version.get(e.destination_version, 0.0) + e.requests
                errors += e.errors
            points.append({"t": t + step, "rps": {v: n / seconds for v, n in sorted(by_version.items())},
                           "errors_per_s": errors / seconds})
            t += step
        return {"window": window, "step": step, "points": points}


def _keep(edge: Edge, reporter: str | None) -> bool:
    if reporter:
        return edge.reporter == reporter
    if edge.reporter == "source":
        return True
    return edge.source_workload in ("", "unknown")  # only the destination saw callers outside the mesh


class Scraper:
    """Scrapes every registered target each `SCRAPE_INTERVAL` into a `TelemetryStore`."""

    def __init__(self, store: TelemetryStore, interval: float = SCRAPE_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self.targets: dict[str, str] = {}  # name -> /stats/prometheus URL
        self.failures: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def set_target(self, name: str, url: str) -> None:
        self.targets[name] = url

    def remove_target(self, name: str) -> None:
        self.targets.pop(name, None)
        self.store.forget(name)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def scrape_once(self, session: aiohttp.ClientSession) -> None:
        names = list(self.targets)
        results = await asyncio.gather(*(self._fetch(session, self.targets[n]) for n in names),
                                       return_exceptions=True)
        now = time.time()
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                self.failures[name] = f"{type(result).__name__}: {result}"
                continue
            self.failures.pop(name, None)
            try:
                self.store.add(name, now, result)
            except ValueError as exc:  # a malformed exposition: keep the old samples
                self.failures[name] = f"unparsable metrics: {exc}"

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> str:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=self.interval * 0.9)) as resp:
            resp.raise_for_status()
            return await resp.text()

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                try:
                    await self.scrape_once(session)
                except Exception:  # never let one bad round stop telemetry
                    log.exception("telemetry scrape round failed")
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
