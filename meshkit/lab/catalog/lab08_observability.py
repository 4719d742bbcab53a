"""Lab 08 — Observability: RED numbers, an incident, one request traced, and the recovery proved."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshkit.lab import checks, incidents, observe, resilience
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict, require_passed_before, require_variable

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB", "RATINGS"]

RATINGS = "ratings-v1-0"     # the one instance of ratings
SERVICES = ("productpage", "details", "reviews", "ratings")


def healthy_baseline(mesh: Mesh, _lab: Lab) -> None:
    rows = {r["service"]: r for r in observe.red(mesh, checks.window_since_change(mesh)).rows}
    quiet = [s for s in SERVICES if rows.get(s, {}).get("requests", 0) < 10]
    checks.expect(not quiet, f"fewer than 10 requests reached {', '.join(quiet)} since the lab's routing "
                             f"rule "
                             "was applied, so there are no RED numbers yet: send traffic first")
    failing = [f"{s} ({rows[s]['error %']} % errors)" for s in SERVICES if rows[s]["error %"] > 1]
    checks.expect(not failing, f"the baseline should be healthy, but {', '.join(failing)}")


def outage_seen(mesh: Mesh, _lab: Lab) -> None:
    down = [w for w in mesh.workloads() if w["name"] == RATINGS and not w["healthy"]]
    checks.expect(bool(down), f"{RATINGS} is still running: this step crashes its app")
    edges = mesh.telemetry(15, destination="ratings").get("edges", [])
    failed = sum(round(e["requests"] * e["error_rate"]) for e in edges)
    checks.expect(failed >= 10, f"ratings is down, but the telemetry of the last 15 s shows only {failed} "
                                f"failed "
                                "calls to it (at least 10 needed): send traffic while it is down")


def traced_to_failure(mesh: Mesh, lab: Lab) -> None:
    traced: Any = require_variable(lab, "traced", "traced = observe.traced_request(mesh)")
    hops = observe.trace(mesh, traced, wait=1.0)
    checks.expect(len(hops.sidecars()) >= 4, f"the access logs hold {len(hops.hops)} lines of request "
                  f"{traced.request_id}, from {hops.sidecars()}; a page crosses at least 4 sidecars")
    checks.expect(any(str(h.get("authority", "")).startswith("ratings") for h in hops.failed()),
                  f"request {traced.request_id} did not fail on its way to ratings; trace a new one while "
                  f"{RATINGS} is down")


def recovered(mesh: Mesh, lab: Lab) -> None:
    require_passed_before(lab, "incident", "a recovery needs an incident first")
    down = [w["name"] for w in mesh.workloads() if not w["healthy"]]
    checks.expect(not down, f"still down: {', '.join(down)}; mesh.restart(name) brings an instance back")
    calls = [observe.edge(mesh, caller, "ratings", window=6) for caller in ("reviews-v2", "reviews-v3")]
    total = sum(c.get("requests", 0) for c in calls)
    errors = {c["source"]: c["codes"] for c in calls if c and c["error %"] > 0}
    checks.expect(total >= 10, f"only {total} calls to ratings in the last 6 s: send traffic after the "
                               f"restart")
    checks.expect(not errors, f"calls to ratings still fail in the last 6 s: {errors}")


def slow_hop_found(mesh: Mesh, lab: Lab) -> None:
    """The learner names the service whose app took longest in the newest slow trace (at least
    500 ms): the hop the planted delay is on, read from the trace itself."""
    answer: Any = require_variable(lab, "slow_hop", 'slow_hop = "<service>"')
    slowest = incidents.slowest_apps(mesh, min_duration="500ms", limit=5)  # the challenge's DI left out
    checks.expect(bool(slowest), "the collector holds no trace of 500 ms or more: run the cell that plants "
                                 "the delay (it sends traced page views)")
    trace_id, service = next(iter(slowest.items()))
    checks.expect(str(answer).strip().lower() == service,
                  f"in the newest slow trace ({trace_id}) the time is not spent in {answer}'s app: compare "
                  "each span's own time with the calls it made (charts.trace, mesh.explain)")


def half_delayed(mesh: Mesh, _lab: Lab) -> None:
    """A delay fault on ratings holds about half of the calls to it (flag DI), judged by an exact
    binomial test over the calls the callers' sidecars counted since the change."""
    checks.require_fault(mesh, "ratings", kind="delay")
    seen = resilience.outcomes(mesh, "ratings")
    delayed = sum(n for flag, n in seen.flags.items() if "DI" in flag.split(","))
    checks.require_share({"DI": delayed, "not delayed": seen.requests - delayed}, "DI", 0.5,
                         what="calls to ratings since your last change (flag DI = delay injected)")


LAB = LabSpec(
    name="08-observability",
    title="Observability",
    objectives=("Read RED numbers (rate, errors, duration) per service and per edge from the sidecars",
                "Find an outage that hides behind healthy 200s at the edge",
                "Follow one request through every sidecar by its x-request-id (access logs)",
                "Prove a recovery with the telemetry of one edge",
                "Follow a slow request through its spans and find the delayed hop"),
    prerequisites=("Lab 00", "Percentiles (p50, p99)"),
    steps=(
        StepSpec("baseline", "RED numbers for all four Bookinfo services, all healthy", healthy_baseline,
                 task="Start the flags chart and send 20 requests a second for 5 s through the ingress; wait "
                      "for them.",
                 hint="The telemetry comes from real requests: mesh.load(rps=..., duration=...).wait().",
                 solution="flags.start()\nmesh.load(rps=20, duration=5).wait()"),
        predict("predict-outage", "Predict: ratings crashes. What does the ingress see?",
                "The app of ratings crashes (its sidecar stays). Users keep loading the product page. "
                "What status does the ingress gateway mostly count for /productpage?",
                ("a) 200: productpage still answers, without the stars; the errors are deeper in the graph",
                 "b) 503 for every page", "c) 504 after a timeout"),
                "a) 200: productpage still answers, without the stars; the errors are deeper in the graph"),
        StepSpec("incident", "ratings crashed, and the telemetry shows the failing calls", outage_seen,
                 task="Crash the app of ratings (its one instance is RATINGS).",
                 hint="mesh.kill(instance) kills an app (its sidecar stays); the next cell sends traffic.",
                 solution="mesh.kill(RATINGS)"),
        StepSpec("trace", "One failing request followed through every sidecar", traced_to_failure,
                 task="Send one traced page request, keep it in `traced`, and show its trace.",
                 hint="observe.traced_request(mesh) sends one page request with its own x-request-id; "
                      "observe.trace(mesh, traced) collects its access-log lines.",
                 solution="traced = observe.traced_request(mesh)\nprint(traced)\nobserve.trace(mesh, "
                          "traced)"),
        StepSpec("recover", "ratings is back and its callers see no errors", recovered,
                 task="Bring ratings back (the next cell sends traffic).",
                 hint="mesh.restart(instance); the check reads the edges to ratings.",
                 solution="mesh.restart(RATINGS)"),
        StepSpec("slow-hop", "A slow page followed span by span: the delayed hop found", slow_hop_found,
                 task='Find a trace of 500 ms or more, look at its spans, and set slow_hop = "<service>": '
                      "the service whose own work takes the time.",
                 hint='mesh.traces(min_duration="500ms") lists slow traces; charts.trace(mesh, trace_id) '
                      "draws the spans; mesh.explain(trace_id) splits each hop's time (app_ms: the app's "
                      "own).",
                 solution='slow_trace = mesh.traces(min_duration="500ms")[0]["trace_id"]\n'
                          'hops = [h for h in mesh.explain(slow_trace)["hops"] if h.get("app_ms")]\n'
                          'slow_hop = max(hops, key=lambda h: h["app_ms"])["to"]\n'
                          "charts.trace(mesh, slow_trace)"),
        StepSpec("challenge", "Challenge: half of the calls to ratings are delayed 2 s, seen as "
                              "DI", half_delayed,
                 task="Delay half of the calls to ratings by 2 s and send 15 page views a second for 6 s; "
                      "then "
                      "find the delay with what you learned (flags, RED numbers, a trace).",
                 hint="rules.fault(host, delay=..., percent=...); the response-flags chart shows DI.",
                 solution='mesh.apply(rules.fault("ratings", delay="2s", percent=50))\n'
                          "mesh.load(rps=15, duration=6).wait()\n"
                          'response_flags(mesh, "ratings", window=10, live=False)'),
    ),
)
