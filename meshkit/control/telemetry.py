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
Except mTLS: a caller reports ``connection_security_policy="unknown"`` (as in Istio), so every edge
takes its ``mtls`` from the receiving side's report of the same edge (`meshkit top`, the graph).

`TelemetryStore` is pure data (tested without sockets); `Scraper` is the aiohttp loop around it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import re
import time
from array import array
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

log = logging.getLogger("meshkit.control.telemetry")

RETENTION = 16 * 60.0  # seconds of history kept (15 min windows, Istio's longest look-back, plus margin)
NAN = float("nan")
SCRAPE_INTERVAL = 1.0
QUANTILES = (0.5, 0.9, 0.95, 0.99)  # p95: the web console's edge label, as Kiali's
SERIES_QUANTILES = (0.5, 0.95, 0.99)  # the console's duration-over-time chart, as Kiali's

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



def _new_edge(key: tuple[str, ...]) -> Edge:
    """An empty Edge for the EDGE_LABELS values ``key``."""
    reporter, source, source_namespace, service, namespace, workload, version = key
    return Edge(reporter, source, source_namespace, service, namespace, workload, version)


K = TypeVar("K", bound=Hashable)


def _fill(columns: dict[K, array[float]], values: dict[K, float], slot: int, capacity: int) -> None:
    """Write one sample of every series into ``slot`` (NaN for a series absent from ``values``)."""
    for key, column in columns.items():
        column[slot] = values.pop(key, NAN)
    for key, value in values.items():  # series seen for the first time
        column = array("d", [NAN]) * capacity
        column[slot] = value
        columns[key] = column

class TargetHistory:
    """One target's samples in fixed-size rings: a time column plus one column per series.

    Columns are ``array('d')`` (8 bytes a value, NaN where the series was absent), so 15+ minutes
    at one sample a second for a whole mesh stays in the tens of MiB; keys are interned so a
    label tuple is stored once, not once per scrape.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = 0  # samples ever added
        self.times = array("d", [NAN]) * capacity
        self.requests: dict[RequestKey, array[float]] = {}
        self.buckets: dict[BucketKey, array[float]] = {}

    def add(self, t: float, requests: dict[RequestKey, float], buckets: dict[BucketKey, float]) -> None:
        slot = self.count % self.capacity
        self.times[slot] = t
        _fill(self.requests, requests, slot, self.capacity)
        _fill(self.buckets, buckets, slot, self.capacity)
        self.count += 1

    def slot_at_or_before(self, t: float) -> int | None:
        """The slot of the newest sample taken at or before ``t``."""
        stored = min(self.count, self.capacity)
        for age in range(stored):
            slot = (self.count - 1 - age) % self.capacity
            if self.times[slot] <= t:
                return slot
        return None


REQUESTS_PREFIX = "istio_requests_total{"
BUCKETS_PREFIX = "istio_request_duration_milliseconds_bucket{"
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class ScrapeParser:
    """Reads the two Istio series telemetry needs out of a Prometheus text exposition.

    A sidecar's label sets repeat scrape after scrape, so each distinct label text is parsed once
    and remembered: a scrape then costs a prefix test, a dict lookup and a float() per line.
    (prometheus_client's general parser took ~35 ms per sidecar per second, a third of a core for
    a Bookinfo mesh; tests still check the sidecar's output with it.)
    """

    MAX_CACHED = 50_000  # label texts remembered (dropped wholesale past this: a bound, not an LRU)

    def __init__(self) -> None:
        self._requests: dict[str, RequestKey] = {}
        self._buckets: dict[str, BucketKey] = {}

    def parse(self, text: str) -> tuple[dict[RequestKey, float], dict[BucketKey, float]]:
        requests: dict[RequestKey, float] = {}
        buckets: dict[BucketKey, float] = {}
        for line in text.splitlines():
            if line.startswith(REQUESTS_PREFIX):
                labels, value = _split(line, len(REQUESTS_PREFIX))
                key = self._requests.get(labels)
                if key is None:
                    key = self._remember(self._requests, labels, _request_key(labels))
                requests[key] = requests.get(key, 0.0) + value
            elif line.startswith(BUCKETS_PREFIX):
                labels, value = _split(line, len(BUCKETS_PREFIX))
                bkey = self._buckets.get(labels)
                if bkey is None:
                    bkey = self._remember(self._buckets, labels, _bucket_key(labels))
                buckets[bkey] = buckets.get(bkey, 0.0) + value
        return requests, buckets

    def _remember(self, cache: dict[str, Any], labels: str, key: Any) -> Any:
        if len(cache) >= self.MAX_CACHED:
            cache.clear()
        cache[labels] = key
        return key


def _split(line: str, start: int) -> tuple[str, float]:
    """``name{labels} value [timestamp]`` -> (labels text, value); ValueError when malformed."""
    brace = line.rfind("}")
    fields = line[brace + 1 :].split()
    if brace < start or not fields:
        raise ValueError(f"malformed sample line: {line[:120]!r}")
    return line[start:brace], float(fields[0])


def parse_labels(text: str) -> dict[str, str]:
    """The labels of a sample, from the text between its braces (``a="1",b="say \\"hi\\""``), unescaped."""
    return {name: re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], value)
            for name, value in _LABEL.findall(text)}


def _request_key(text: str) -> RequestKey:
    labels = parse_labels(text)
    return tuple(labels.get(k, "") for k in REQUEST_LABELS)


def _bucket_key(text: str) -> BucketKey:
    labels = parse_labels(text)
    if "le" not in labels:
        raise ValueError(f"histogram bucket without le: {text[:120]!r}")
    return tuple(labels.get(k, "") for k in EDGE_LABELS), float(labels["le"])


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


def _node_id(workload: str, namespace: str) -> str:
    """A graph node: the workload's name in ``default`` and ``istio-system`` (``reviews-v1``,
    ``istio-ingressgateway``), ``<workload>.<namespace>`` elsewhere (``sleep.foo`` and ``sleep.bar``
    are two nodes, as Kiali's nodes are per namespace)."""
    plain = namespace in ("default", "istio-system", "", "unknown")
    return workload if plain else f"{workload}.{namespace}"


def _edge_id(edge: Edge) -> tuple[str, str, str, str]:
    """An edge apart from who reported it: caller, service, workload and version called."""
    return (edge.source_workload, edge.destination_service, edge.destination_workload,
            edge.destination_version)


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


def _increase(column: array[float], old: int | None, new: int) -> float:
    """Counter increase between two slots; a counter that went down was reset (the sidecar
    restarted); a series absent at ``old`` counted everything it has from zero."""
    value = column[new]
    if math.isnan(value):
        return 0.0
    before = NAN if old is None else column[old]
    if math.isnan(before):
        return value
    return value - before if value >= before else value


class TelemetryStore:
    """Rolling per-target samples and the queries over them. Pure data: no I/O."""

    def __init__(self, retention: float = RETENTION, interval: float = SCRAPE_INTERVAL) -> None:
        self.retention = retention
        self._capacity = int(retention / interval) + 2
        self._targets: dict[str, TargetHistory] = {}
        self._parser = ScrapeParser()  # also interns label keys: one tuple per series, not per scrape

    def add(self, target: str, t: float, text: str) -> None:
        requests, buckets = self._parser.parse(text)
        history = self._targets.get(target)
        if history is None:
            history = self._targets[target] = TargetHistory(self._capacity)
        history.add(t, requests, buckets)

    def forget(self, target: str) -> None:
        self._targets.pop(target, None)

    def targets(self) -> list[str]:
        return sorted(self._targets)

    def _pairs(self, start: float, end: float) -> Iterable[tuple[TargetHistory, int | None, int]]:
        """Per target: (history, slot of the last sample at or before ``start`` or None when the target
        appeared inside the window, slot of the last sample by ``end``)."""
        for history in self._targets.values():
            newest = history.slot_at_or_before(end)
            if newest is None:
                continue
            oldest = history.slot_at_or_before(start)
            if oldest != newest:
                yield history, oldest, newest

    def edges(self, window: float, now: float | None = None) -> tuple[list[Edge], float]:
        """Edges over the last ``window`` seconds; also returns the seconds actually covered."""
        end = now if now is not None else time.time()
        start = end - window
        edges: dict[tuple[str, ...], Edge] = {}
        covered = 0.0
        width = len(EDGE_LABELS)
        for history, old, new in self._pairs(start, end):
            covered = max(covered, history.times[new] - (history.times[old] if old is not None else start))
            for key, column in history.requests.items():
                inc = _increase(column, old, new)
                if inc <= 0:
                    continue
                edge_key = key[:width]
                edge = edges.get(edge_key) or edges.setdefault(edge_key, _new_edge(edge_key))
                code, flags, security = key[width:]
                edge.requests += inc
                edge.codes[code] = edge.codes.get(code, 0.0) + inc
                if code.startswith("5") or code == "0":
                    edge.errors += inc
                if flags not in ("", "-"):
                    edge.flags[flags] = edge.flags.get(flags, 0.0) + inc
                if security == "mutual_tls":
                    edge.mtls += inc
            for (edge_key, le), column in history.buckets.items():
                if edge_key in edges:  # empty buckets too: quantiles interpolate from them as lower bounds
                    b = edges[edge_key].buckets
                    b[le] = b.get(le, 0.0) + max(0.0, _increase(column, old, new))
        return list(edges.values()), covered or window

    def query(self, window: float = 60.0, now: float | None = None, reporter: str | None = None,
              source: str | None = None, destination: str | None = None) -> dict[str, Any]:
        """The ``/api/v1/telemetry`` answer: per-edge RED metrics over ``window`` seconds."""
        edges, seconds = self.edges(window, now)
        chosen = [e for e in edges if _keep(e, reporter)]
        # Only the callee's sidecar knows whether the connection was mutual TLS (the caller reports
        # connection_security_policy="unknown", as in Istio): a caller's edge takes its padlock from
        # the receiving side's report of the same edge.
        secured = {_edge_id(e) for e in edges if e.reporter == "destination" and e.requests
                   and e.mtls >= e.requests * 0.5}
        if source:
            chosen = [e for e in chosen if e.source_workload == source]
        if destination:
            chosen = [e for e in chosen if destination in (e.destination_service, e.destination_workload)]
        chosen.sort(key=lambda e: (e.source_workload, e.destination_service, e.destination_version))
        answer = []
        for e in chosen:
            row = e.to_dict(seconds)
            row["mtls"] = row["mtls"] or _edge_id(e) in secured
            answer.append(row)
        return {"window": window, "seconds": seconds, "edges": answer}

    def graph(self, window: float = 60.0, now: float | None = None) -> dict[str, Any]:
        """A Kiali-like service graph: workload and service nodes, edges with rate, errors, mTLS."""
        answer = self.query(window, now)  # mTLS already taken from the receiving side (see query)
        nodes: dict[str, dict[str, Any]] = {}
        links = []
        for e in answer["edges"]:
            src = _node_id(e["source_workload"], e["source_namespace"])
            dst = _node_id(e["destination_workload"], e["destination_namespace"]) \
                if e["destination_workload"] not in ("", "unknown") else e["destination_service"]
            nodes.setdefault(src, {"id": src, "kind": "workload", "namespace": e["source_namespace"]})
            nodes.setdefault(dst, {"id": dst, "kind": "workload", "service": e["destination_service"],
                                   "version": e["destination_version"],
                                   "namespace": e["destination_namespace"]})
            links.append({"source": src, "target": dst, "rps": e["rps"], "error_rate": e["error_rate"],
                          "mtls": e["mtls"], "p99": e["latency_ms"]["p99"], "flags": e["flags"]})
        return {"window": window, "nodes": sorted(nodes.values(), key=lambda n: n["id"]), "edges": links}

    def series(self, window: float = 60.0, step: float = 1.0, now: float | None = None,
               destination: str | None = None, *, sources: frozenset[str] | None = None,
               versions: frozenset[str] | None = None) -> dict[str, Any]:
        """Per-step request rates by destination version (the live traffic-split chart), errors per
        second, and the duration quantiles of each step (``latency_ms``: p50/p95/p99, None in a step
        without requests), over the edges to ``destination`` (from ``sources`` workloads, to
        ``versions`` of it, when given)."""
        end = now if now is not None else time.time()
        points = []
        t = end - window
        while t < end - 1e-9:
            edges, seconds = self.edges(step, now=t + step)
            by_version: dict[str, float] = {}
            errors = 0.0
            buckets: dict[float, float] = {}
            for e in edges:
                if not _keep(e, None) or (destination and e.destination_service != destination) or \
                        (sources is not None and e.source_workload not in sources) or \
                        (versions is not None and e.destination_version not in versions):
                    continue
                by_version[e.destination_version] = by_version.get(e.destination_version, 0.0) + e.requests
                errors += e.errors
                for le, count in e.buckets.items():
                    buckets[le] = buckets.get(le, 0.0) + count
            points.append({"t": t + step, "rps": {v: n / seconds for v, n in sorted(by_version.items())},
                           "errors_per_s": errors / seconds,
                           "latency_ms": {f"p{round(q * 100)}": histogram_quantile(q, buckets)
                                          for q in SERIES_QUANTILES}})
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
        self.listeners: list[Callable[[str, str], None]] = []  # (target, text) of each good scrape
        self.rounds: list[Callable[[float], None]] = []  # the samples' time, after each round
        self.last_round = 0.0  # wall-clock time of the newest round's samples
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
        self.last_round = now
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                self.failures[name] = f"{type(result).__name__}: {result}"
                continue
            self.failures.pop(name, None)
            try:
                self.store.add(name, now, result)
            except ValueError as exc:  # a malformed exposition: keep the old samples
                self.failures[name] = f"unparsable metrics: {exc}"
                continue
            for listener in self.listeners:
                listener(name, result)
        for done in self.rounds:
            done(now)

    async def scrape_now(self) -> float:
        """One extra round at once, outside the schedule; returns its samples' time. A client that
        just changed the config (or just ended a load) counts requests from (or up to) this sample
        instead of guessing which scheduled scrape came after the change: every request answered
        before it is in, every later one out."""
        async with aiohttp.ClientSession() as session:
            await self.scrape_once(session)
        return self.last_round

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
