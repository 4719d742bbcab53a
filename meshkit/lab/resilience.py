"""Lab 05's helpers: make an app misbehave on purpose, read what the sidecars did about it, check it.

- App knobs (every demo app has them, docs/apps.md): `make_flaky` answers a share of a service's
  requests with 503, `make_slow` delays them, `heal` turns the knobs off again. They talk to the
  apps' own ports on the local mesh, the way a chaos tool would, not through the mesh.
- The caller's view: `upstream(mesh, caller, host)` reads the caller's sidecar ``/clusters`` admin
  page (Envoy's counter names: ``upstream_rq_retry``, ``upstream_rq_pending_overflow``, ejections
  per endpoint); `outcomes(...)` sums the telemetry API's codes and response flags of one edge.
- Checks (`require_*`) raise `CheckFailed` saying what is missing, from the mesh's real config,
  the sidecars' real counters and real traffic since the latest change.

It must not import the runtime or the proxy (it uses `Mesh` and plain HTTP), keep state between
calls, or wait unboundedly (every request has a timeout).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from meshkit.config.resources import parse_duration_ms
from meshkit.lab.checks import CheckFailed, expect, require_rule, window_since_change
from meshkit.lab.display import LabError, ShownAsTable, Table
from meshkit.lab.mesh import Mesh
from meshkit.runtime.catalog import workload_of

__all__ = [
    "ADMIN_TIMEOUT", "Outcome", "Upstream", "clusters", "heal", "make_flaky", "make_slow", "outcomes",
    "require_absorbed", "require_connection_pool", "require_ejected", "require_flag",
    "require_outlier_detection", "require_rate_limited", "require_retries", "require_timeout", "restore",
    "seconds", "upstream",
]

ADMIN_TIMEOUT = 5.0


# -- app knobs ----------------------------------------------------------------------------------

def _instances(mesh: Mesh, service: str) -> list[dict[str, Any]]:
    if mesh.local is None:
        raise LabError("the app knobs work on the local mesh only (connect() without a URL)")
    rows = [w for w in mesh.workloads() if w.get("service") == service and w.get("app_port")]
    if not rows:
        known = sorted({str(w.get("service")) for w in mesh.workloads()})
        raise LabError(f"service: no running app of service {service!r} (services: {', '.join(known)})")
    return rows


def _admin(port: int, path: str, query: Mapping[str, Any] | None = None) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urlencode(query)}" if query else "")
    try:
        request = urllib.request.Request(url, method="POST")
        with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT) as resp:
            answer: dict[str, Any] = json.loads(resp.read() or b"{}")
            return answer
    except urllib.error.HTTPError as exc:
        refusal = exc.read().decode(errors="replace")
        raise LabError(f"{path}: the app on port {port} refused: {refusal}") from None
    except OSError as exc:
        raise LabError(f"{path}: no answer from the app on port {port} ({exc}); is it running?") from None


def _turn(mesh: Mesh, service: str, path: str, query: Mapping[str, Any]) -> list[str]:
    done = []
    for row in _instances(mesh, service):
        if row.get("pid") is None or not row.get("healthy", True):
            continue  # a killed instance has no knobs to turn
        _admin(int(row["app_port"]), path, query)
        done.append(str(row["name"]))
    return done


def make_flaky(mesh: Mesh, service: str, rate: float = 0.5, code: int = 503) -> str:
    """Every instance of ``service`` answers ``rate`` of its requests with ``code`` (the app itself)."""
    if not 0.0 <= rate <= 1.0:
        raise LabError(f"rate: expected a share from 0 to 1, got {rate!r}")
    names = _turn(mesh, service, "/admin/fail", {"rate": rate, "code": code})
    return f"{', '.join(names)} now fail {rate:.0%} of requests with HTTP {code}"


def make_slow(mesh: Mesh, service: str, seconds: float) -> str:
    """Every instance of ``service`` takes ``seconds`` longer to answer each request."""
    if not 0.0 <= seconds <= 10.0:
        raise LabError(f"seconds: expected 0..10, got {seconds!r}")
    names = _turn(mesh, service, "/admin/delay", {"seconds": seconds})
    return f"{', '.join(names)} now take {seconds:g} s longer per request"


def heal(mesh: Mesh, *services: str) -> str:
    """Turn every knob off on the instances of ``services`` (all services when none is named)."""
    wanted = services or tuple(sorted({str(w["service"]) for w in mesh.workloads()
                                       if w.get("app_port") and w.get("service")}))
    names = [name for service in wanted for name in _turn(mesh, service, "/admin/reset", {})]
    return f"healed: {', '.join(names) or 'nothing to heal'}"


def restore(mesh: Mesh) -> str:
    """Undo everything lab 05 does: stop loads, restart killed instances, heal every app, reset the
    config to Bookinfo's baseline. The next lab starts from a healthy, rule-free mesh."""
    mesh.stop_loads()
    restarted = [str(w["name"]) for w in mesh.workloads() if not w.get("healthy")]
    for name in restarted:
        mesh.restart(name)
    healed = heal(mesh)
    mesh.reset(recheck=False)  # the lab's clean-up: the steps done stay done
    return f"restarted: {', '.join(restarted) or 'none'}; {healed}; config back to the Bookinfo baseline"


# -- what the sidecars saw ------------------------------------------------------------------------

def _sidecar_admin_port(mesh: Mesh, caller: str) -> int:
    if mesh.local is None:
        raise LabError("reading a sidecar's admin page works on the local mesh only")
    for row in mesh.workloads():
        if caller in (row.get("name"), row.get("service")) and row.get("admin_port"):
            return int(row["admin_port"])
    raise LabError(f"caller: no sidecar of {caller!r} "
                   "(give an instance such as 'productpage-v1-0' or a service)")


def clusters(mesh: Mesh, caller: str) -> dict[str, Any]:
    """The caller sidecar's ``/clusters`` admin page: every upstream cluster with stats and endpoints."""
    port = _sidecar_admin_port(mesh, caller)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/clusters", timeout=ADMIN_TIMEOUT) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer
    except OSError as exc:
        raise LabError(f"no answer from the sidecar of {caller} (admin port {port}): {exc}") from None


@dataclass(repr=False)
class Upstream(ShownAsTable):
    """One host as a caller's sidecar sees it: Envoy's cluster counters (summed over subsets) and
    its endpoints (ejected or not)."""

    caller: str
    host: str
    stats: dict[str, int] = field(default_factory=dict)
    endpoints: list[dict[str, Any]] = field(default_factory=list)

    def ejected(self) -> list[str]:
        return sorted({str(e.get("instance")) for e in self.endpoints if e.get("ejected")})

    def times_ejected(self) -> int:
        return sum(int(e.get("times_ejected") or 0) for e in self.endpoints)

    def table(self) -> Table:
        rows = [{"endpoint": e.get("instance"), "cluster": e.get("cluster"),
                 "ejected": "EJECTED" if e.get("ejected") else "", "times_ejected": e.get("times_ejected"),
                 "ok": e.get("rq_success"), "errors": e.get("rq_error")} for e in self.endpoints]
        counters = ", ".join(f"{k} {v}" for k, v in self.stats.items() if v) or "none yet"
        title = f"{self.host} as {self.caller}'s sidecar sees it (counters since it started: {counters})"
        return Table(rows, ["endpoint", "cluster", "ejected", "times_ejected", "ok", "errors"], title=title)


def upstream(mesh: Mesh, caller: str, host: str) -> Upstream:
    """What ``caller``'s sidecar knows about ``host`` (all its clusters: the host and its subsets)."""
    view = Upstream(caller, host)
    for name, cluster in clusters(mesh, caller).items():
        if cluster.get("service") != host or name.startswith("inbound"):
            continue
        for key, value in (cluster.get("stats") or {}).items():
            if isinstance(value, int):
                view.stats[key] = view.stats.get(key, 0) + value
        view.endpoints += [{**e, "cluster": name} for e in cluster.get("endpoints") or []]
    if not view.endpoints and not view.stats:
        raise LabError(f"host: {caller}'s sidecar has no cluster for {host!r}")
    return view


@dataclass
class Outcome:
    """Requests on one edge summed over versions: HTTP codes and Envoy response flags."""

    requests: float = 0.0
    codes: dict[str, float] = field(default_factory=dict)
    flags: dict[str, float] = field(default_factory=dict)

    def count(self, prefix: str) -> float:
        """Requests whose code starts with ``prefix`` ("5" for every 5xx, "429" for one code)."""
        return sum(n for code, n in self.codes.items() if code.startswith(prefix))

    def __str__(self) -> str:
        codes = ", ".join(f"{c}: {n:.0f}" for c, n in sorted(self.codes.items())) or "none"
        flags = ", ".join(f"{f}: {n:.0f}" for f, n in sorted(self.flags.items())) or "none"
        return f"{self.requests:.0f} requests — codes {codes}; flags {flags}"

    __repr__ = __str__


def outcomes(mesh: Mesh, destination: str, *, source: str | None = None, reporter: str = "source",
             window: float | None = None) -> Outcome:
    """Codes and flags of the requests to service ``destination`` (from workload ``source``) in the
    last ``window`` seconds (default: since the latest config change), as ``reporter`` counted them."""
    window = window or window_since_change(mesh)
    query: dict[str, Any] = {"destination": destination, "reporter": reporter}
    if source:
        query["source"] = source
    total = Outcome()
    for edge in mesh.telemetry(window, **query).get("edges", []):
        if edge.get("destination_service") != destination or edge.get("reporter", reporter) != reporter:
            continue
        total.requests += float(edge.get("requests", 0))
        for code, n in (edge.get("codes") or {}).items():
            total.codes[code] = total.codes.get(code, 0.0) + float(n)
        for flag, n in (edge.get("flags") or {}).items():
            total.flags[flag] = total.flags.get(flag, 0.0) + float(n)
    return total


# -- checks ----------------------------------------------------------------------------------------

def seconds(duration: str) -> float:
    """Istio's duration text ("0.5s", "500ms", "1m30s") in seconds, read as the config loader reads it;
    LabError naming the value otherwise."""
    try:
        return parse_duration_ms(str(duration)) / 1000.0
    except ValueError:
        raise LabError(f"duration: expected a number with a unit (500ms, 0.5s, 1m), "
                       f"got {duration!r}") from None


def _http_routes(mesh: Mesh, host: str) -> list[dict[str, Any]]:
    return list(require_rule(mesh, "VirtualService", host).get("spec", {}).get("http", []) or [])


def require_timeout(mesh: Mesh, host: str, at_most: float) -> float:
    """The VirtualService for ``host`` gives up after at most ``at_most`` seconds; returns its timeout."""
    found = [seconds(r["timeout"]) for r in _http_routes(mesh, host) if r.get("timeout")]
    expect(bool(found), f"VirtualService {host!r} sets no timeout (spec.http[].timeout)")
    expect(max(found) <= at_most, f"VirtualService {host!r} waits {max(found):g} s; "
                                  f"the step wants a timeout of at most {at_most:g} s")
    return max(found)


def require_retries(mesh: Mesh, host: str) -> dict[str, Any]:
    """The VirtualService for ``host`` retries failed requests; returns its retry policy."""
    for route in _http_routes(mesh, host):
        policy = route.get("retries") or {}
        if int(policy.get("attempts") or 0) > 0:
            return dict(policy)
    raise CheckFailed(f"VirtualService {host!r} has no retry policy with attempts > 0 (spec.http[].retries)")


def _traffic_policy(mesh: Mesh, host: str, part: str) -> dict[str, Any]:
    rule = require_rule(mesh, "DestinationRule", host)
    policy = (rule.get("spec", {}).get("trafficPolicy") or {}).get(part)
    if not policy:
        raise CheckFailed(f"DestinationRule {host!r} has no spec.trafficPolicy.{part}")
    return dict(policy)


def require_connection_pool(mesh: Mesh, host: str) -> dict[str, Any]:
    return _traffic_policy(mesh, host, "connectionPool")


def require_outlier_detection(mesh: Mesh, host: str) -> dict[str, Any]:
    return _traffic_policy(mesh, host, "outlierDetection")


def require_flag(mesh: Mesh, destination: str, flag: str, *, at_least: int = 1, source: str | None = None,
                 reporter: str = "source") -> Outcome:
    """Since the latest change, at least ``at_least`` requests to ``destination`` carried ``flag``."""
    seen = outcomes(mesh, destination, source=source, reporter=reporter)
    expect(seen.flags.get(flag, 0.0) >= at_least,
           f"{at_least} request(s) to {destination} with response flag {flag} expected since your last "
           "change, "
           f"saw {seen.flags.get(flag, 0.0):.0f} ({seen}); send traffic first")
    return seen


def require_absorbed(mesh: Mesh, caller: str, service: str, *, min_failures: int = 5,
                     max_error_share: float = 0.15, min_requests: int = 20) -> tuple[Outcome, Outcome]:
    """Since the latest change, ``service`` itself failed requests (its own sidecar counted >=
    ``min_failures`` 5xx) while ``caller`` got an error for at most ``max_error_share`` of its calls."""
    got = outcomes(mesh, service, source=caller, reporter="source")
    served = outcomes(mesh, service, source=caller, reporter="destination")
    expect(got.requests >= min_requests,
           f"{caller} made {got.requests:.0f} calls to {service} since your last change "
           f"(at least {min_requests} needed): send traffic, e.g. mesh.load(rps=20, duration=4).wait()")
    expect(served.count("5") >= min_failures,
           f"{service} answered only {served.count('5'):.0f} of its requests with 5xx since your last change "
           f"({served}); it should be failing about half of them (make_flaky) for retries to matter")
    share = got.count("5") / got.requests
    expect(share <= max_error_share,
           f"{caller} still got an error for {share:.0%} of its {got.requests:.0f} calls to {service} "
           f"({got}); with retries at most {max_error_share:.0%} should fail")
    return got, served


def require_ejected(mesh: Mesh, caller: str, host: str, *, slack: int = 5,
                    min_requests: int = 20) -> Upstream:
    """``caller``'s sidecar (an instance, 'productpage-v1-0') has an endpoint of ``host`` ejected right
    now, and since the latest change that endpoint received at most ``slack`` of ``caller``'s
    requests (counted by its own sidecar: the failures that got it ejected) while ``caller`` sent at
    least ``min_requests`` to ``host``. Without ejection it would get its share of every request."""
    require_outlier_detection(mesh, host)
    view = upstream(mesh, caller, host)
    ejected = {str(e.get("workload")) for e in view.endpoints if e.get("ejected")}
    expect(bool(ejected),
           f"{caller}'s sidecar has no endpoint of {host} ejected right now (ejections so far: "
           f"{view.times_ejected()}); an endpoint must fail consecutive requests while traffic runs")
    source = workload_of(caller)
    window = window_since_change(mesh)
    sent = outcomes(mesh, host, source=source, window=window)
    expect(sent.requests >= min_requests,
           f"{source} sent {sent.requests:.0f} requests to {host} since your last change (at least "
           f"{min_requests} needed): send traffic, e.g. mesh.load(rps=20, duration=6).wait()")
    received: dict[str, float] = {}
    answer = mesh.telemetry(window, source=source, destination=host, reporter="destination")
    for edge in answer.get("edges", []):
        workload = str(edge.get("destination_workload"))
        received[workload] = received.get(workload, 0.0) + float(edge.get("requests", 0))
    leaked = sum(n for w, n in received.items() if w in ejected)
    expect(leaked <= slack,
           f"the ejected {', '.join(sorted(ejected))} still received {leaked:.0f} of {source}'s requests "
           f"since your last change (at most {slack} expected: the failures that got it ejected)")
    return view


def require_rate_limited(mesh: Mesh, workload: str, *, at_least: int = 5) -> Outcome:
    """An EnvoyFilter rate-limits ``workload`` and, since the latest change, its sidecar answered
    >= ``at_least`` requests with 429 (flag RL) while still serving others."""
    filters = [f for f in mesh.get("EnvoyFilter") or [] if isinstance(f, dict) and _selects(f, workload)]
    expect(bool(filters), f"no EnvoyFilter selects app: {workload} (spec.workloadSelector.labels.app)")
    seen = outcomes(mesh, workload, reporter="destination")
    expect(seen.count("429") >= at_least and seen.flags.get("RL", 0.0) >= at_least,
           f"{workload}'s sidecar answered {seen.count('429'):.0f} requests with 429 (flag RL) since your "
           f"last change ({seen}); send more requests than the bucket holds, e.g. "
           "mesh.load(rps=20, duration=4)")
    expect(seen.count("2") > 0, f"{workload} served no request at all since your last change ({seen}); "
                                "a rate limit should still let the bucket's share through")
    return seen


def _selects(envoy_filter: Mapping[str, Any], workload: str) -> bool:
    selector = (envoy_filter.get("spec") or {}).get("workloadSelector") or {}
    return bool((selector.get("labels") or {}).get("app") == workload)
