"""Building blocks for `Step` checks: read the mesh's REAL config and traffic, say what is missing.

A check function takes the `Mesh` and either returns (passed) or raises `CheckFailed` whose text
tells the learner precisely what is not there yet. Traffic is judged only since the latest config
change, so requests sent before the learner's rule cannot make a step pass.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any

from meshkit.lab.display import Rule
from meshkit.lab.mesh import Mesh

__all__ = [
    "ALPHA", "CheckFailed", "binomial_p_value", "default_weights", "expect", "probe_versions",
    "requests_by_version", "require_edge_traffic", "require_fault", "require_header_route", "require_healthy",
    "require_mirrored", "require_rule", "require_share", "require_traffic", "require_weights", "served_by",
    "window_since", "window_since_change",
]

MAX_WINDOW = 600.0


class CheckFailed(Exception):
    """A step's check found the mesh not (yet) as the step wants it; the text says what is missing."""


def expect(condition: bool, missing: str) -> None:
    if not condition:
        raise CheckFailed(missing)


def require_rule(mesh: Mesh, kind: str, name: str, namespace: str = "default") -> Rule:
    rule = mesh.get(kind, name, namespace)
    if not isinstance(rule, Rule):
        raise CheckFailed(f"there is no {kind} named {name!r} in namespace {namespace!r} yet; apply one")
    return rule


def default_weights(rule: Mapping[str, Any]) -> dict[str, int]:
    """Subset -> weight of the VirtualService's catch-all route (its last http route without a match)."""
    routes = [r for r in rule.get("spec", {}).get("http", []) or [] if not r.get("match")]
    if not routes:
        return {}
    dests = routes[0].get("route", []) or []
    single = len(dests) == 1
    weights: dict[str, int] = {}
    for d in dests:
        subset = d.get("destination", {}).get("subset") or "(any)"
        weights[subset] = weights.get(subset, 0) + int(d.get("weight", 100 if single else 0))
    return {k: v for k, v in weights.items() if v}


def require_weights(mesh: Mesh, host: str, expected: Mapping[str, int]) -> None:
    rule = require_rule(mesh, "VirtualService", host)
    actual = default_weights(rule)
    expect(actual == dict(expected),
           f"VirtualService {host!r} sends {_fmt(actual) or 'nothing'} by default; "
           f"the step wants {_fmt(expected)}")


def require_header_route(mesh: Mesh, host: str, *, header: str, value: str, to: str) -> None:
    """The VirtualService for ``host`` sends requests whose ``header`` is exactly ``value`` to ``to``."""
    rule = require_rule(mesh, "VirtualService", host)
    for http in rule.get("spec", {}).get("http", []) or []:
        for match in http.get("match", []) or []:
            wanted = (match.get("headers") or {}).get(header) or {}
            if wanted.get("exact") == value:
                subsets = {d.get("destination", {}).get("subset") for d in http.get("route", []) or []}
                expect(subsets == {to}, f"requests with {header}: {value} go to {sorted(map(str, subsets))} "
                                        f"of {host}; the step wants them on {to}")
                return
    raise CheckFailed(f"VirtualService {host!r} has no route matching the header {header}: exact {value!r}")


def require_fault(mesh: Mesh, host: str, *, kind: str = "delay", header: str | None = None,
                  value: str | None = None) -> dict[str, Any]:
    """The VirtualService for ``host`` injects a ``kind`` fault ("delay" or "abort"), for ``header: value``
    requests when given; returns the fault."""
    rule = require_rule(mesh, "VirtualService", host)
    for http in rule.get("spec", {}).get("http", []) or []:
        injected = (http.get("fault") or {}).get(kind)
        if not injected:
            continue
        if header is None:
            return dict(injected)
        for match in http.get("match", []) or []:
            if ((match.get("headers") or {}).get(header) or {}).get("exact") == value:
                return dict(injected)
    who = f" for requests with {header}: {value}" if header else ""
    raise CheckFailed(f"VirtualService {host!r} injects no {kind} fault{who}")


def _fmt(weights: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}%" for k, v in weights.items())


def window_since_change(mesh: Mesh) -> float:
    """Seconds since traffic counts under the latest config change (`Mesh.counting_since`: the
    control plane's scrape right after the change took effect; at least 1 s).

    Requests answered just before a change must not count under the new rule, and every request
    sent after it must: a window starting at a scheduled scrape would do one or the other wrong.
    """
    return max(1.0, min(MAX_WINDOW, time.time() - mesh.counting_since()))


def window_since(started: float) -> float:
    """Seconds since wall-clock time ``started`` (at least 1 s, at most MAX_WINDOW), for telemetry windows."""
    return max(1.0, min(MAX_WINDOW, time.time() - started))


def requests_by_version(mesh: Mesh, service: str, window: float | None = None,
                        reporter: str = "source") -> dict[str, float]:
    """Requests to ``service`` per destination version, as the callers' sidecars counted them
    (``reporter="source"``: what callers got answers from) or the callees' (``"destination"``:
    what each version received, mirrored copies included)."""
    window = window or window_since_change(mesh)
    answer = mesh.telemetry(window, destination=service, reporter=reporter)
    counts: dict[str, float] = {}
    for edge in answer.get("edges", []):
        if edge.get("destination_service") == service:
            version = edge.get("destination_version") or "unknown"
            counts[version] = counts.get(version, 0.0) + float(edge.get("requests", 0))
    return counts


def require_traffic(mesh: Mesh, service: str, shares: Mapping[str, tuple[float, float]],
                    min_requests: int = 20) -> dict[str, float]:
    """Since the last change, ``service`` got >= ``min_requests`` and each version's share is in range.

    ``shares`` maps a version to (low, high) fractions, e.g. ``{"v3": (0.03, 0.3)}``.
    """
    counts = requests_by_version(mesh, service)
    total = sum(counts.values())
    expect(total >= min_requests,
           f"{service} got {total:.0f} requests since your last change (at least {min_requests} needed): "
           f"send traffic first, e.g. mesh.load(rps=20, duration=6).wait()")
    for version, (low, high) in shares.items():
        share = counts.get(version, 0.0) / total
        expect(low <= share <= high,
               f"{version} of {service} got {share:.0%} of its {total:.0f} requests since your last change; "
               f"the step expects {low:.0%}..{high:.0%} (by version: {_counts(counts)})")
    return counts


def _counts(counts: Mapping[str, float]) -> str:
    return ", ".join(f"{v} {n:.0f}" for v, n in sorted(counts.items())) or "none"


def require_mirrored(mesh: Mesh, service: str, *, primary: str, to: str, share: tuple[float, float],
                     min_requests: int = 20) -> None:
    """Since the last change, callers were answered by ``primary`` only, while ``to`` received a copy
    of ``share`` (low, high) of those requests (counted by ``to``'s own sidecar)."""
    rule = require_rule(mesh, "VirtualService", service)
    mirrors = [h.get("mirror", {}).get("subset") for h in rule.get("spec", {}).get("http", []) or []]
    expect(to in mirrors, f"VirtualService {service!r} mirrors to {[m for m in mirrors if m] or 'nothing'}; "
                          f"the step wants a mirror to subset {to}")
    require_traffic(mesh, service, {primary: (0.95, 1.0)}, min_requests)
    served = requests_by_version(mesh, service).get(primary, 0.0)
    received = requests_by_version(mesh, service, reporter="destination").get(to, 0.0)
    ratio = received / served if served else 0.0
    low, high = share
    expect(low <= ratio <= high,
           f"{to} of {service} received {received:.0f} mirrored requests for {served:.0f} answered by "
           f"{primary} ({ratio:.0%}); the step expects {low:.0%}..{high:.0%}")


def require_edge_traffic(mesh: Mesh, source: str, destination: str, min_requests: int = 1,
                         window: float = 60.0) -> dict[str, Any]:
    """Some request went from workload ``source`` to service ``destination`` in the last ``window`` s."""
    answer = mesh.telemetry(window, source=source, destination=destination, reporter="source")
    total = sum(float(e.get("requests", 0)) for e in answer.get("edges", []))
    expect(total >= min_requests,
           f"no traffic from {source} to {destination} in the last {window:.0f} s "
           f"({total:.0f} requests); send some with mesh.load(...)")
    return answer


def require_healthy(mesh: Mesh) -> None:
    sick = [w["name"] for w in mesh.workloads() if not w.get("healthy")]
    expect(not sick, f"these workloads are not running: {', '.join(sick)} "
                     "(mesh.restart(name) brings one back)")
    expect(mesh.wait_synced(5.0), "not every sidecar has ACKed the latest config yet (see mesh.status())")


# -- behaviour judged statistically ---------------------------------------------------------------

ALPHA = 0.001  # a check refuses a share only when traffic this far from it would happen < 0.1 % of the time
_SERVED_BY = re.compile(r"Reviews served by:</dt><dd><u>reviews-(v\d+)-")


def binomial_p_value(successes: int, trials: int, p: float) -> float:
    """Two-sided exact binomial test: the probability of an outcome at most as likely as ``successes``."""
    if trials <= 0:
        return 1.0
    if p <= 0.0 or p >= 1.0:
        return 1.0 if successes == round(p * trials) else 0.0

    def log_pmf(k: int) -> float:
        return (math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                + k * math.log(p) + (trials - k) * math.log1p(-p))

    observed = log_pmf(successes) + 1e-9
    return min(1.0, sum(math.exp(lp) for k in range(trials + 1) if (lp := log_pmf(k)) <= observed))


def require_share(counts: Mapping[str, float], version: str, expected: float, *, what: str,
                  min_requests: int = 40, alpha: float = ALPHA) -> None:
    """``version``'s share of ``counts`` is statistically compatible with ``expected`` (exact binomial
    test at level ``alpha``): a 50/50 split where 90/10 is asked fails, noise around 90/10 does not."""
    total = round(sum(counts.values()))
    expect(total >= min_requests, f"{what}: only {total} requests to judge (at least {min_requests} needed): "
                                  "send traffic first, e.g. mesh.load(rps=20, duration=6).wait()")
    hits = min(total, round(counts.get(version, 0.0)))
    p_value = binomial_p_value(hits, total, expected)
    expect(p_value >= alpha,
           f"{what}: {version} got {hits} of {total} requests ({hits / total:.0%}); the step asks for "
           f"{expected:.0%}, and a share this far from it happens with probability {p_value:.2g} "
           f"(by version: {_counts(counts)})")


def served_by(page_text: str) -> str | None:
    """The reviews version that answered a Bookinfo page (from its "Reviews served by" line)."""
    found = _SERVED_BY.search(page_text)
    return found.group(1) if found else None


def probe_versions(mesh: Mesh, requests: int, user: str | None = None) -> dict[str, float]:
    """Send ``requests`` page views through the ingress (signed in as ``user``) and count which
    reviews version answered each: the check's own traffic, independent of what the learner sent."""
    counts: dict[str, float] = {}
    for _ in range(requests):
        page = mesh.visit(user=user, timeout=10.0)
        key = served_by(page.text) if page.status == 200 else f"HTTP {page.status}"
        key = key or "no reviews"
        counts[key] = counts.get(key, 0.0) + 1
    return counts
