"""Lab 10 — Debugging 503s: three planted incidents, found with traces and `explain`, fixed, proven.

Each incident is planted by `meshkit.lab.incidents.plant(mesh, n)` (config the mesh accepts, as
Istio would). A *find* step checks the learner's answer — the service whose calls fail and the
response flag — against the incident and against the traces the collector holds; a *fix* step
judges what the learner applied by the traffic after it: no 503 among the calls to the service, and
(incident 1) the canary's 20 % reaching v3, by an exact binomial test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshkit.lab import checks, incidents, resilience
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict, require_variable

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["FIX_YAML", "LAB", "MIN_CALLS"]

MIN_CALLS = 20   # calls to the service after the fix before the traffic can prove it

FIX_YAML = {
    1: """%%mesh apply
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
""",
    2: """%%mesh apply
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  subsets:
  - name: v1
    labels:
      version: v1
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 100
      http:
        http1MaxPendingRequests: 100
""",
}


def _answer(lab: Lab, number: int) -> tuple[str, str]:
    value: Any = require_variable(lab, f"found_{number}",
                                  f'found_{number} = ("<service>", "<flag>"), e.g. ("httpbin", "NR")')
    pair = isinstance(value, tuple | list) and len(value) == 2  # a service and a flag
    checks.expect(pair and all(isinstance(v, str) for v in value),
                  f'found_{number} should be a pair of strings ("<service>", "<flag>"), got {value!r}')
    return str(value[0]).strip().lower(), str(value[1]).strip().upper()


def _found(number: int) -> Any:
    incident = incidents.INCIDENTS[number]

    def check(mesh: Mesh, lab: Lab) -> None:
        service, flag = _answer(lab, number)
        traced = incidents.evidence(mesh, incident.service, incident.flag)
        checks.expect(bool(traced), f"the traces hold no failing call to the service of incident {number}: "
                                    f"plant it again (incidents.plant(mesh, {number})) and look then")
        checks.expect(service == incident.service,
                      f"calls to {service} are not the ones failing in incident {number}: which hop of a "
                      "failing trace answered 503? (mesh.explain(trace_id)['hops'])")
        checks.expect(flag == incident.flag,
                      f"the failing hop's response flag is not {flag}: read the flags of that hop in "
                      "mesh.explain(trace_id) (or meshkit explain ID)")

    return check


def _no_failures(mesh: Mesh, service: str, number: int) -> resilience.Outcome:
    seen = resilience.outcomes(mesh, service)
    checks.expect(seen.requests >= MIN_CALLS,
                  f"{service} got {seen.requests:.0f} calls since your last change (at least {MIN_CALLS} "
                  "needed): run the traffic cell after your fix")
    failed = {code: n for code, n in seen.codes.items() if str(code).startswith("5")}
    checks.expect(not failed, f"calls to {service} still fail since your last change: {seen} — "
                              f"incident {number} is not fixed")
    return seen


def fixed_canary(mesh: Mesh, _lab: Lab) -> None:
    """Incident 1: the v3 canary keeps its 20 % and every call to reviews is answered."""
    checks.require_weights(mesh, "reviews", {"v1": 80, "v3": 20})
    _no_failures(mesh, "reviews", 1)
    counts = checks.requests_by_version(mesh, "reviews")
    checks.require_share(counts, "v3", 0.20, what="reviews' calls since your last change (the canary sends "
                                                  "20 % to subset v3, which should be the v3 pods)")


def fixed_breaker(mesh: Mesh, _lab: Lab) -> None:
    """Incident 2: under the same load, with details as slow as before, no call overflows."""
    _no_failures(mesh, "details", 2)


def fixed_chaos(mesh: Mesh, _lab: Lab) -> None:
    """Incident 3: no abort fault left on ratings, and its calls are answered."""
    faulty = [r for r in mesh.get() or [] if isinstance(r, dict) and r.get("kind") == "VirtualService"
              and "ratings" in (r.get("spec", {}).get("hosts") or [])
              and any("abort" in (route.get("fault") or {}) for route in r["spec"].get("http", []) or [])]
    checks.expect(not faulty, "a VirtualService for ratings still aborts requests: "
                  + ", ".join(r["metadata"]["name"] for r in faulty))
    _no_failures(mesh, "ratings", 3)


# the cell before each find step plants its incident (instructor fast-forward runs it too)
PLANT = "from meshkit.lab import incidents\nincidents.plant(mesh, {})"

LAB = LabSpec(
    name="10-debugging-503s",
    title="Debugging 503s",
    objectives=("Find the failing hop of a request from its trace (`mesh.traces`, `charts.trace`)",
                "Read a response flag and its likely cause with `mesh.explain` / `meshkit explain`",
                "Tell UH (no healthy upstream), UO (circuit breaker) and FI (injected abort) apart",
                "Fix the config, and prove the fix with the traffic after it"),
    prerequisites=("Lab 05 (resilience)", "Lab 08 (observability)"),
    steps=(
        predict("predict-canary", "Predict: how many pages lose their reviews?",
                "1 call in 5 from productpage to reviews fails with 503. productpage tries reviews twice "
                "before it gives up. What share of product pages show no reviews?",
                ("a) about 20 %", "b) about 4 %: a page loses its reviews only when both tries fail",
                 "c) none: the sidecar retries every 503"),
                "b) about 4 %: a page loses its reviews only when both tries fail"),
        StepSpec("find-1", "Incident 1 found: the failing service and its response flag", _found(1),
                 task='Find a failing trace, explain it, and set found_1 = ("<service>", "<flag>"): the '
                      "service whose calls fail and the response flag on that hop.",
                 hint="mesh.traces(errors=True) lists failing traces (newest first); mesh.explain(trace_id) "
                      "tells each hop's status, flags and their likely cause.",
                 solution='failing = mesh.traces(errors=True)[0]["trace_id"]\n'
                          "explained = mesh.explain(failing)\nprint(explained['verdict'])\n"
                          'found_1 = ("reviews", "UH")',
                 before=PLANT.format(1)),
        StepSpec("fix-1", "Incident 1 fixed: the canary reaches v3, no call to reviews fails", fixed_canary,
                 exercise="yaml",
                 task="Keep the 80/20 canary, and fix the config that leaves subset v3 without a healthy "
                      "endpoint. The next cell sends traffic; the check judges it.",
                 hint="A subset selects the pods that carry all of its labels. Compare the DestinationRule's "
                      "subset v3 (mesh.get('DestinationRule', 'reviews')) with the pods' labels "
                      "(mesh.status()).",
                 solution=FIX_YAML[1], traffic="mesh.load(rps=20, duration=4).wait()"),
        StepSpec("find-2", "Incident 2 found: the failing service and its response flag", _found(2),
                 task='Find a failing trace of incident 2, explain it, and set found_2 = ("<service>", '
                      '"<flag>").',
                 hint="The same tools: mesh.traces(errors=True), mesh.explain(trace_id) — or charts.trace to "
                      "see where the red bar is.",
                 solution='failing = mesh.traces(errors=True)[0]["trace_id"]\n'
                          "print(mesh.explain(failing)['verdict'])\n"
                          'found_2 = ("details", "UO")',
                 before=PLANT.format(2)),
        StepSpec("fix-2", "Incident 2 fixed: no call to details overflows, under the same load",
                 fixed_breaker,
                 exercise="yaml",
                 task="details is slow today and stays slow; change the config so its callers' calls are "
                      "answered under this load. The next cell sends the same traffic.",
                 hint="UO means the caller's sidecar refused the call: the DestinationRule's "
                      "trafficPolicy.connectionPool allows too few connections and pending requests.",
                 solution=FIX_YAML[2], traffic="mesh.load(rps=20, duration=4).wait()"),
        StepSpec("find-3", "Challenge: incident 3 found", _found(3),
                 task='Find incident 3 on your own and set found_3 = ("<service>", "<flag>").',
                 hint="Which rule routed the failing hop? explain names it (route).",
                 solution='failing = mesh.traces(errors=True)[0]["trace_id"]\n'
                          "print(mesh.explain(failing)['verdict'])\n"
                          'found_3 = ("ratings", "FI")',
                 before=PLANT.format(3)),
        StepSpec("fix-3", "Challenge: incident 3 fixed, ratings answers every call", fixed_chaos,
                 task="Remove the cause of incident 3 (nothing else). The next cell sends traffic.",
                 hint="explain's route says which VirtualService injected the fault: mesh.delete(kind=..., "
                      "name=...).",
                 solution='mesh.delete(kind="VirtualService", name="chaos-friday")',
                 traffic="mesh.load(rps=20, duration=4).wait()"),
    ),
)
