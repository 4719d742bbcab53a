"""Incidents planted on purpose (lab 10, and lab 08's slow hop): the learner finds them with traces.

`plant(mesh, n)` puts the mesh back to Bookinfo's baseline, turns on tracing of every request (a
Telemetry resource at 100 % sampling, what an on-call engineer does while debugging), plants
incident ``n`` of `INCIDENTS` — config the mesh accepts, and sometimes a slow app — and sends a
short, bounded burst of page views. It returns what users would report (`Symptoms`: how many pages
answered, and the notices they showed), never the cause. `plant_slow_hop(mesh)` makes one Bookinfo
service slow (chosen at random) and sends three page views with a forced trace. `clear(mesh)` undoes
both. `evidence(mesh, service, flag)` and `slowest_apps(mesh)` read the trace collector, so a lab's
check compares the learner's answer with what the traces really show.

It must not show the planted config or name the cause in anything it returns (the learner's job is
to find it), keep state between calls, or send unbounded traffic (every burst is bounded in count
and time; the app knobs work on the local mesh only).
"""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshkit.lab import resilience
from meshkit.lab.display import LabError, Rule, Table
from meshkit.lab.mesh import Mesh

__all__ = [
    "BURST_PAGES", "INCIDENTS", "SLOW_SERVICES", "Incident", "Symptoms", "clear", "evidence", "plant",
    "plant_slow_hop", "slowest_apps", "trace_everything",
]

BURST_PAGES = 24          # page views a plant sends (while a background load of BURST_RPS runs)
BURST_RPS = 20.0
BURST_SECONDS = 3.0
SLOW_SERVICES = ("details", "reviews", "ratings")
SLOW_SECONDS = 0.6
PAGE_TIMEOUT = 10.0
SPANS_WAIT = 5.0
SHIP_INTERVAL = 1.2       # sidecars ship their spans once a second


def trace_everything() -> Rule:
    """The Telemetry resource that samples every request (Istio's default is 1 %): mesh-wide, in the
    root namespace ``istio-system``."""
    return Rule({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"name": "mesh-default", "namespace": "istio-system"},
            "spec": {"tracing": [{"randomSamplingPercentage": 100}]}})


def _subsets(mesh: Mesh, host: str) -> list[dict[str, Any]]:
    rule = mesh.get("DestinationRule", host)
    spec = rule.get("spec", {}) if isinstance(rule, dict) else {}
    return list(spec.get("subsets", []) or [])


def _canary_with_a_stray_label(mesh: Mesh) -> list[dict[str, Any]]:
    subsets = [s for s in _subsets(mesh, "reviews") if s.get("name") != "v3"]
    subsets.append({"name": "v3", "labels": {"version": "v3", "track": "canary"}})
    return [
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"host": "reviews", "subsets": subsets}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"hosts": ["reviews"], "http": [{"route": [
             {"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
             {"destination": {"host": "reviews", "subset": "v3"}, "weight": 20}]}]}},
    ]


def _hardened_details(mesh: Mesh) -> list[dict[str, Any]]:
    return [{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
             "metadata": {"name": "details", "namespace": "default"},
             "spec": {"host": "details", "subsets": _subsets(mesh, "details"),
                      "trafficPolicy": {"connectionPool": {
                          "tcp": {"maxConnections": 1},
                          "http": {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1}}}}}]


def _forgotten_chaos_test(_mesh: Mesh) -> list[dict[str, Any]]:
    return [{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "chaos-friday", "namespace": "default"},
             "spec": {"hosts": ["ratings"], "http": [{
                 "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 30.0}}},
                 "route": [{"destination": {"host": "ratings"}}]}]}}]


@dataclass(frozen=True)
class Incident:
    """A planted fault: the config it applies, an app made slow (service, seconds) if any, and what
    the learner must find — the service whose calls fail and the response flag on the failing hop."""

    number: int
    ticket: str
    service: str
    flag: str
    config: Callable[[Mesh], list[dict[str, Any]]]
    slow: tuple[str, float] | None = None


INCIDENTS: dict[int, Incident] = {
    1: Incident(1, "Since the reviews v3 canary went out (20 % of traffic), some pages have no reviews.",
                "reviews", "UH", _canary_with_a_stray_label),
    2: Incident(2, "Since last week's hardening, many pages show no book details.",
                "details", "UO", _hardened_details, slow=("details", 0.2)),
    3: Incident(3, "Some pages say the ratings are unavailable. Nobody changed ratings.",
                "ratings", "FI", _forgotten_chaos_test),
}


@dataclass(repr=False)
class Symptoms:
    """What the users saw during a burst of page views: statuses and the notices on the pages."""

    ticket: str
    pages: int
    statuses: dict[int, int]
    notices: dict[str, int]

    def table(self) -> Table:
        rows = [{"what users saw": f"HTTP {code}", "pages": n} for code, n in sorted(self.statuses.items())]
        rows += [{"what users saw": f'"{text}"', "pages": n} for text, n in self.notices.items()]
        return Table(rows, ["what users saw", "pages"],
                     title=f"Ticket: {self.ticket} — {self.pages} page views just now")

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def __repr__(self) -> str:
        return str(self.table())

    __str__ = __repr__


def clear(mesh: Mesh) -> str:
    """Stop loads, restart killed instances, heal every app, config back to the baseline."""
    return resilience.restore(mesh)


def plant(mesh: Mesh, number: int) -> Symptoms:
    """Plant incident ``number`` (1, 2 or 3) on a clean baseline with every request traced, send a
    burst of page views, and return what the users saw."""
    incident = INCIDENTS.get(number)
    if incident is None:
        raise LabError(f"number: no incident {number!r} (incidents: {', '.join(map(str, INCIDENTS))})")
    clear(mesh)
    mesh.apply([trace_everything(), *incident.config(mesh)])
    if incident.slow is not None:
        resilience.make_slow(mesh, *incident.slow)
    return _burst(mesh, incident.ticket)


def _burst(mesh: Mesh, ticket: str) -> Symptoms:
    load = mesh.load(rps=BURST_RPS, duration=BURST_SECONDS)
    statuses: Counter[int] = Counter()
    notices: Counter[str] = Counter()
    try:
        for _ in range(BURST_PAGES):
            page = mesh.visit("/productpage", timeout=PAGE_TIMEOUT)
            statuses[page.status] += 1
            notices.update(page.notices())
    finally:
        load.wait(timeout=BURST_SECONDS + 15)
    _wait_for_collector(mesh)
    return Symptoms(ticket, sum(statuses.values()), dict(statuses), dict(notices))


def plant_slow_hop(mesh: Mesh, *, pages: int = 3) -> Table:
    """Make one of `SLOW_SERVICES` (chosen at random) take `SLOW_SECONDS` longer per request, then send
    ``pages`` page views that force a trace (``x-client-trace-id``); a table of their times.

    A page served by reviews v1 never calls ratings, so when ratings is the slow one a view can be
    fast (as users see it: "sometimes slow"): more views follow, up to ``4 * pages``, until one is
    slow, so the exercise always has a slow trace to read."""
    if mesh.ingress_url is None:
        raise LabError("plant_slow_hop needs the ingress URL: the local mesh")
    service = random.choice(SLOW_SERVICES)  # a lab exercise, not security
    resilience.make_slow(mesh, service, SLOW_SECONDS)
    rows: list[dict[str, object]] = []
    while len(rows) < pages or (len(rows) < 4 * pages
                                and not any(float(str(r["seconds"])) >= SLOW_SECONDS for r in rows)):
        rows.append(_traced_page_view(mesh.ingress_url))
    for row in rows:
        _wait_for_spans(mesh, str(row["x-request-id"]))
    return Table(rows, ["x-request-id", "status", "seconds"], title="Users say the product page is slow:")


def _traced_page_view(ingress_url: str) -> dict[str, object]:
    """One ``GET /productpage`` through the ingress that forces a trace; its id, status and time."""
    request_id = str(uuid.uuid4())
    headers = {"x-request-id": request_id, "x-client-trace-id": request_id}
    began = time.monotonic()
    try:
        page = urllib.request.Request(ingress_url + "/productpage", headers=headers)
        with urllib.request.urlopen(page, timeout=PAGE_TIMEOUT) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        raise LabError(f"plant_slow_hop: no answer from the ingress {ingress_url} ({exc})") from None
    seconds = time.monotonic() - began
    return {"x-request-id": request_id, "status": status, "seconds": f"{seconds:.2f}"}


def _wait_for_spans(mesh: Mesh, request_id: str, timeout: float = SPANS_WAIT) -> None:
    """Until the collector holds every hop of the request (each call it made reached a server span):
    sidecars ship their spans once a second, so a trace read at once may miss its deeper spans."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            hops = mesh.explain(request_id).get("hops", [])
        except LabError:
            hops = []
        if len(hops) >= 3 and all(h.get("reached_server") for h in hops):  # the page, details, reviews
            return
        time.sleep(0.3)


def _wait_for_collector(mesh: Mesh, timeout: float = SPANS_WAIT) -> None:
    """Until the collector has received no new span for more than a second (the sidecars' shipping
    interval): then every span of the burst is in and its traces are whole."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        received = int(mesh.client.request("GET", "traces/stats").get("received", 0))
        if received != last:
            last, since = received, time.monotonic()
        elif time.monotonic() - since > SHIP_INTERVAL:
            return
        time.sleep(0.2)


def evidence(mesh: Mesh, service: str, flag: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """Hops of recent traces (errors only) that called ``service`` and carry response flag ``flag``."""
    found = []
    for summary in mesh.traces(errors=True, limit=limit):
        for hop in mesh.explain(summary["trace_id"]).get("hops", []):
            if hop.get("to") == service and flag in str(hop.get("flags", "")).split(","):
                found.append(hop)
        if found:
            break
    return found


def slowest_apps(mesh: Mesh, *, min_duration: str = "500ms", limit: int = 10) -> dict[str, str]:
    """Recent traces of at least ``min_duration`` whose time an app spent (no injected delay or abort
    on any hop), newest first: trace id -> the service whose app took longest in it (its server span
    minus the calls it made, as `meshkit explain` splits the time)."""
    slowest: dict[str, str] = {}
    for summary in mesh.traces(min_duration=min_duration, limit=limit):
        hops = mesh.explain(summary["trace_id"]).get("hops", [])
        served = [h for h in hops if h.get("app_ms") is not None]
        if served and not any(h.get("fault_fired") for h in hops):
            slowest[summary["trace_id"]] = str(max(served, key=lambda h: h["app_ms"])["to"])
    return slowest
