"""Observability without installing Kiali or Grafana: RED metrics, Istio's metric text, access logs, traces.

What a dashboard or a log search would show, read from the mesh itself:

- `red(mesh, window)`: rate, errors and duration per service (or per workload) from the telemetry API;
- `edge(mesh, source, destination, window)`: the telemetry API's answer for one edge over a window;
- `metrics(mesh, target, "istio_requests_total", reporter="destination")`: one Istio metric's samples
  straight from a sidecar's ``/stats/prometheus``; `explain(sample)` says what each label means;
- `access_log(mesh, instance)`: a sidecar's JSON access log (Envoy's fields: status, response_flags,
  duration, upstream, request_id...);
- `traced_request(mesh)` sends one request through the ingress with a fresh ``x-request-id``, and
  `trace(mesh, request_id)` collects every access-log line carrying that id from every sidecar, in
  time order: the request's path through the mesh, hop by hop, like a distributed trace.

Access logs are files in the local mesh's state dir, so those helpers work on the local mesh only.
Nothing here waits unboundedly or keeps module-level state.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from meshkit.control.telemetry import parse_labels
from meshkit.lab.display import LabError, ShownAsTable, Table
from meshkit.lab.mesh import Mesh
from meshkit.runtime.local import MeshError

__all__ = [
    "FETCH_TIMEOUT",
    "LABEL_MEANINGS",
    "TAIL_BYTES",
    "Sample",
    "Samples",
    "Trace",
    "TracedRequest",
    "access_log",
    "edge",
    "explain",
    "find",
    "metric_text",
    "metrics",
    "parse_metrics",
    "red",
    "red_rows",
    "trace",
    "traced_request",
]

TAIL_BYTES = 2 * 1024 * 1024  # of each access log read (the newest lines: a request just sent is there)
FETCH_TIMEOUT = 5.0

# Istio's standard labels on istio_requests_total and istio_request_duration_milliseconds.
LABEL_MEANINGS = {
    "reporter": "which sidecar counted the request: 'source' (the caller's) or 'destination' (the callee's)",
    "source_workload": "the calling workload (deployment), 'unknown' for callers outside the mesh",
    "source_workload_namespace": "the calling workload's namespace",
    "source_principal": "the caller's SPIFFE identity from its mTLS certificate ('unknown' without mTLS)",
    "source_app": "the caller's app label",
    "source_version": "the caller's version label",
    "destination_workload": "the workload that served the request",
    "destination_workload_namespace": "the serving workload's namespace",
    "destination_principal": "the server's SPIFFE identity",
    "destination_app": "the server's app label",
    "destination_version": "the server's version label (the subset a VirtualService routes to)",
    "destination_service": "the service's fully qualified host name",
    "destination_service_name": "the service's short name",
    "destination_service_namespace": "the service's namespace",
    "request_protocol": "http (or grpc, tcp)",
    "response_code": "the HTTP status the reporter saw (0: no response at all)",
    "response_flags": "Envoy's response flags: why a request failed or was changed ('-' for none)",
    "connection_security_policy": "mutual_tls: the callee's sidecar saw an mTLS connection; none: plain "
                                  "text; unknown: a source reporter (only the callee knows)",
    "le": "histogram bucket: requests that took at most this many milliseconds",
}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")


# -- metric text --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One line of a Prometheus exposition: metric name, labels, value."""

    name: str
    labels: dict[str, str]
    value: float

    def __str__(self) -> str:
        labels = ",".join(f'{k}="{v}"' for k, v in self.labels.items())
        return f"{self.name}{{{labels}}} {self.value:g}"


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (comments skipped); ValueError names a bad line."""
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        found = _SAMPLE.match(line)
        if found is None:
            raise ValueError(f"line {number} is not a Prometheus sample: {line[:120]!r}")
        name, labels, value = found.groups()
        samples.append(Sample(name, parse_labels(labels or ""), float(value)))
    return samples


class Samples(ShownAsTable, list[Sample]):
    """Samples of one metric; shows as a table of the labels that differ between them, plus the value."""

    def __init__(self, samples: Iterable[Sample], title: str = "") -> None:
        super().__init__(samples)
        self.title = title

    def columns(self) -> list[str]:
        names: list[str] = []
        for s in self:
            names += [k for k in s.labels if k not in names]
        varying = [k for k in names if len({s.labels.get(k) for s in self}) > 1]
        return varying or names[:4]

    def table(self) -> Table:
        columns = self.columns()
        rows = [{**{c: s.labels.get(c, "") for c in columns}, "value": f"{s.value:g}"} for s in self]
        return Table(rows, [*columns, "value"], title=self.title)

    def total(self) -> float:
        return sum(s.value for s in self)


def _target(mesh: Mesh, name: str) -> dict[str, Any]:
    """The scrape target ``name`` names: exact, or an instance/workload prefix ("reviews-v1", "ingress")."""
    targets = mesh.scrape_targets()
    for t in targets:
        if t["name"] == name:
            return t
    found = [t for t in targets if str(t["name"]).startswith((f"{name}-", f"{name}.", f"istio-{name}"))]
    if not found:
        known = ", ".join(str(t["name"]) for t in targets) or "none"
        raise LabError(f"metrics: no sidecar {name!r} among the scrape targets ({known})")
    return found[0]


def metric_text(mesh: Mesh, target: str) -> str:
    """The raw ``/stats/prometheus`` text of one sidecar (``target`` as in `mesh.scrape_targets()`)."""
    return _scrape(target, str(_target(mesh, target)["url"]))


def _scrape(target: str, url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as resp:
            return str(resp.read().decode())
    except OSError as exc:  # URLError included
        raise LabError(f"metrics: the sidecar {target!r} did not answer at {url} ({exc})") from None


def metrics(mesh: Mesh, target: str, name: str = "istio_requests_total", **labels: str) -> Samples:
    """The samples of metric ``name`` on one sidecar, keeping those whose labels equal ``labels``.

    ``metrics(mesh, "reviews-v2", reporter="source", response_code="503")``.
    """
    scraped = _target(mesh, target)
    found = [s for s in parse_metrics(_scrape(target, str(scraped["url"])))
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    where = ", ".join(f"{k}={v}" for k, v in labels.items())
    title = f"{name} on {scraped['name']}" + (f" ({where})" if where else "")
    return Samples(found, title=title)


def explain(sample: Sample | Samples) -> Table:
    """Each label of ``sample`` (or of the first of ``samples``) with its value and what Istio means by it."""
    if isinstance(sample, Samples):
        if not sample:
            return Table([], ["label", "value", "meaning"],
                         title=f"no samples in {sample.title or 'this selection'} yet: send traffic first")
        sample = sample[0]
    rows = [{"label": k, "value": v, "meaning": LABEL_MEANINGS.get(k, "")} for k, v in sample.labels.items()]
    return Table(rows, ["label", "value", "meaning"], title=f"{sample.name} = {sample.value:g}")


# -- RED ---------------------------------------------------------------------------------------------------


def red_rows(edges: list[dict[str, Any]], by: str = "service") -> list[dict[str, Any]]:
    """Rate, Errors, Duration per destination ``service`` or ``workload`` from telemetry edges.

    Rates and errors add up exactly; a service's p50 is the request-weighted mean of its callers'
    p50s and its p99 the worst caller's (quantiles of different edges cannot be merged exactly).
    """
    if by not in ("service", "workload"):
        raise LabError(f"red: by must be 'service' or 'workload', got {by!r}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in edges:
        key = str(e.get("destination_service") or "unknown")
        if by == "workload":
            key = str(e.get("destination_workload") or f"{key}-{e.get('destination_version') or '?'}")
        groups.setdefault(key, []).append(e)
    rows = []
    for name, group in sorted(groups.items()):
        requests = sum(float(e.get("requests", 0)) for e in group)
        errors = sum(float(e.get("requests", 0)) * float(e.get("error_rate", 0.0)) for e in group)
        p50s = [(float(e.get("requests", 0)), (e.get("latency_ms") or {}).get("p50")) for e in group]
        weighted = [(n, p) for n, p in p50s if p is not None]
        p50 = sum(n * p for n, p in weighted) / sum(n for n, _ in weighted) if weighted and \
            sum(n for n, _ in weighted) else None
        p99s = [p for e in group if (p := (e.get("latency_ms") or {}).get("p99")) is not None]
        flags: dict[str, float] = {}
        for e in group:
            for flag, n in (e.get("flags") or {}).items():
                flags[flag] = flags.get(flag, 0.0) + float(n)
        rows.append({
            by: name,
            "rps": round(sum(float(e.get("rps", 0.0)) for e in group), 2),
            "error %": round(100.0 * errors / requests, 1) if requests else 0.0,
            "p50 ms": round(p50, 1) if p50 is not None else None,
            "p99 ms": round(max(p99s), 1) if p99s else None,
            "requests": round(requests),
            "flags": ", ".join(f"{f} {n:.0f}" for f, n in sorted(flags.items())) or "-",
        })
    return rows


def red(mesh: Mesh, window: float = 30.0, *, by: str = "service") -> Table:
    """Kiali's / Grafana's RED view: per destination, requests/s, error %, p50 and p99 in ms, flags."""
    rows = red_rows(mesh.telemetry(window).get("edges", []), by)
    return Table(rows, [by, "rps", "error %", "p50 ms", "p99 ms", "requests", "flags"],
                 title=f"RED metrics per {by}, last {window:.0f} s")


def edge(mesh: Mesh, source: str, destination: str, window: float = 30.0,
         reporter: str = "source") -> dict[str, Any]:
    """The telemetry API's numbers for calls from workload ``source`` to service ``destination``
    over the last ``window`` s, summed over destination versions (``{}`` when there were none)."""
    answer = mesh.telemetry(window, source=source, destination=destination, reporter=reporter)
    edges = answer.get("edges", [])
    if not edges:
        return {}
    rows = red_rows(edges)
    codes: dict[str, int] = {}
    for e in edges:
        for code, n in (e.get("codes") or {}).items():
            codes[code] = codes.get(code, 0) + int(n)
    return {"source": source, "destination": destination, "window": window, **rows[0], "codes": codes}


# -- access logs and traces --------------------------------------------------------------------------


def _logs_dir(mesh: Mesh) -> Path:
    if mesh.local is None:
        raise LabError("access logs are files of the local mesh: connect() without a URL "
                       "(on Kubernetes: kubectl logs <pod> -c istio-proxy)")
    return mesh.local.state.log("probe").parent


def _tail(path: Path, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The complete lines among the last ``max_bytes`` of ``path`` (none when it does not exist)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if size > max_bytes else lines


def _entries(lines: Iterable[str], sidecar: str) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if isinstance(entry, dict):
            found.append({"sidecar": sidecar, **entry})
    return found


def access_log(mesh: Mesh, instance: str, *, last: int = 10) -> Table:
    """The newest ``last`` lines of one sidecar's JSON access log ("productpage-v1-0", "ingressgateway")."""
    if mesh.local is None:
        _logs_dir(mesh)
    assert mesh.local is not None
    try:
        path = mesh.local.log_path(instance, access=True)
    except MeshError as exc:
        raise LabError(f"access_log: {exc}") from None
    last = max(1, last)
    entries = _entries(_tail(path)[-2 * last:], instance)[-last:]  # parse only the newest lines
    columns = ["start_time", "direction", "method", "authority", "path", "status", "response_flags",
               "duration_ms", "upstream_host", "request_id"]
    return Table(entries, columns,
                 title=f"access log of {instance}'s sidecar ({path.name}), newest {len(entries)}")


@dataclass
class TracedRequest:
    """One request sent through the ingress with our own x-request-id."""

    request_id: str
    path: str
    status: int
    seconds: float

    def __str__(self) -> str:
        return f"GET {self.path}: HTTP {self.status} in {self.seconds:.3f} s, x-request-id {self.request_id}"

    __repr__ = __str__


def traced_request(mesh: Mesh, path: str = "/productpage", *, user: str | None = None,
                   timeout: float = 15.0) -> TracedRequest:
    """Send one request through the ingress with a fresh ``x-request-id``; sidecars keep the id and the
    apps forward it, so every hop's access-log line carries it."""
    if mesh.ingress_url is None:
        raise LabError("traced_request needs the ingress URL: connect(url, ingress=...) or the local mesh")
    request_id = str(uuid.uuid4())
    headers = {"x-request-id": request_id, **({"Cookie": f"user={user}"} if user else {})}
    began = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(mesh.ingress_url + path, headers=headers),
                                    timeout=timeout) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        raise LabError(f"traced_request {path}: no answer from the ingress {mesh.ingress_url} "
                       f"({exc})") from None
    return TracedRequest(request_id, path, status, time.monotonic() - began)


@dataclass(repr=False)
class Trace(ShownAsTable):
    """Every access-log line with one request id, oldest first: the request's hops through the mesh."""

    request_id: str
    hops: list[dict[str, Any]] = field(default_factory=list)

    def sidecars(self) -> list[str]:
        return list(dict.fromkeys(h["sidecar"] for h in self.hops))

    def failed(self) -> list[dict[str, Any]]:
        """Hops answered with a 5xx or no response, or marked with a response flag."""
        return [h for h in self.hops if int(h.get("status") or 0) >= 500 or int(h.get("status") or 0) == 0
                or h.get("response_flags") not in (None, "", "-")]

    def rows(self) -> list[dict[str, Any]]:
        if not self.hops:
            return []
        first = min(_when(h) for h in self.hops)
        span = max(max(_when(h) + float(h.get("duration_ms") or 0) / 1000 for h in self.hops) - first, 1e-3)
        rows = []
        for h in self.hops:
            offset = (_when(h) - first) * 1000
            width = 24
            start = min(width - 1, int(offset / 1000 / span * width))
            length = max(1, round(float(h.get("duration_ms") or 0) / 1000 / span * width))
            rows.append({"+ms": f"{offset:.0f}", "timeline": "·" * start + "█" * min(length, width - start),
                         "sidecar": h["sidecar"], "direction": h.get("direction"),
                         "call": f"{h.get('method')} {h.get('authority')}{h.get('path')}",
                         "status": h.get("status"), "flags": h.get("response_flags"),
                         "ms": h.get("duration_ms")})
        return rows

    def table(self) -> Table:
        columns = ["+ms", "timeline", "sidecar", "direction", "call", "status", "flags", "ms"]
        return Table(self.rows(), columns,
                     title=f"trace of x-request-id {self.request_id}: {len(self.hops)} access-log lines "
                           f"from {len(self.sidecars())} sidecars")


def _when(hop: dict[str, Any]) -> float:
    """A hop's start time ("2026-11-26T02:26:30.820Z") as a Unix timestamp (0 when unreadable)."""
    try:
        return datetime.fromisoformat(str(hop.get("start_time", ""))).timestamp()
    except ValueError:
        return 0.0


def find(mesh: Mesh, request_id: str) -> list[dict[str, Any]]:
    """Every access-log line of every sidecar whose request_id is ``request_id`` (start time order)."""
    hops = []
    for path in sorted(_logs_dir(mesh).glob("*.access.log")):
        sidecar = path.name.removesuffix(".access.log")
        lines = [line for line in _tail(path) if request_id in line]
        hops += [e for e in _entries(lines, sidecar) if e.get("request_id") == request_id]
    # Same millisecond: the enclosing hop (a caller's, or a sidecar's inbound around its app's own
    # calls) lasts longer, so it goes first.
    hops.sort(key=lambda h: (str(h.get("start_time")), -float(h.get("duration_ms") or 0.0)))
    return hops


def trace(mesh: Mesh, request_id: str | TracedRequest, *, wait: float = 3.0) -> Trace:
    """Collect the hops of one request from every sidecar's access log.

    Sidecars write their lines within a loop iteration of answering; this polls for at most
    ``wait`` seconds until the count stops growing, then returns what it found (maybe nothing).
    """
    rid = request_id.request_id if isinstance(request_id, TracedRequest) else str(request_id)
    if not rid:
        raise LabError("trace: give a request id (the x-request-id header, or a traced_request(...))")
    deadline = time.monotonic() + max(0.0, wait)
    hops = find(mesh, rid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = find(mesh, rid)
        if again and len(again) == len(hops):
            break
        hops = again
    return Trace(rid, hops)
