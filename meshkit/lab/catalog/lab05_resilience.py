"""Lab 05 — Resilience: timeouts, retries, circuit breaking, outlier detection and rate limits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshkit.lab import checks, resilience
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB"]

REVIEWS_SORRY = "product reviews are currently unavailable"


def fails_fast(mesh: Mesh, _lab: Lab) -> None:
    resilience.require_timeout(mesh, "reviews", at_most=1.0)
    page = mesh.visit()
    checks.expect(page.says(REVIEWS_SORRY) and page.seconds < 1.9,
                  f"the page should come back in well under the 2 s delay without the reviews ({page})")
    resilience.require_flag(mesh, "reviews", "UT", source="productpage-v1")


def retried(mesh: Mesh, _lab: Lab) -> None:
    resilience.require_retries(mesh, "details")
    resilience.require_absorbed(mesh, "productpage-v1", "details", min_failures=10, max_error_share=0.2)


def tripped(mesh: Mesh, _lab: Lab) -> None:
    resilience.require_connection_pool(mesh, "details")
    resilience.require_flag(mesh, "details", "UO", at_least=5, source="productpage-v1")


def ejected(mesh: Mesh, _lab: Lab) -> None:
    resilience.require_ejected(mesh, "productpage-v1-0", "reviews")


def limited(mesh: Mesh, _lab: Lab) -> None:
    resilience.require_rate_limited(mesh, "productpage", at_least=5)


def _retry_policy(mesh: Mesh, host: str) -> dict[str, object]:
    rule = checks.require_rule(mesh, "VirtualService", host)
    policies = [h.get("retries") or {} for h in rule.get("spec", {}).get("http", []) or []]
    checks.expect(any(policies), f"VirtualService {host!r} has no retry policy (http[].retries)")
    return next(p for p in policies if p)


def retry_budget(mesh: Mesh, _lab: Lab) -> None:
    """One retry per request against a details failing 30 % with 503, judged on the traffic since the
    change: details' own sidecar saw ~30 % of the tries fail and at most two tries per request, and
    productpage got an error for ~9 % (0.3 x 0.3) of its calls (exact binomial tests). No retries
    leaves ~30 %, three retries ~1 %."""
    policy = _retry_policy(mesh, "details")
    checks.expect(int(str(policy.get("attempts", 0))) == 1,
                  f"details' retry policy allows {policy.get('attempts')} retries; the budget is one retry "
                  "per request (two tries)")
    got = resilience.outcomes(mesh, "details", source="productpage-v1", reporter="source")
    tried = resilience.outcomes(mesh, "details", source="productpage-v1", reporter="destination")
    since = "since your last change"
    checks.expect(got.requests >= 100,
                  f"productpage made {got.requests:.0f} calls to details {since} (at least 100 needed): send "
                  "traffic, e.g. mesh.load(rps=25, duration=6).wait()")
    checks.require_share({"5xx": tried.count("5"), "ok": tried.requests - tried.count("5")}, "5xx", 0.3,
                         what=f"the tries details' own sidecar answered {since}")
    checks.require_share({"5xx": got.count("5"), "ok": got.requests - got.count("5")}, "5xx", 0.09,
                         what=f"the answers productpage got from details {since} (one retry: 0.3 x 0.3)")
    checks.expect(tried.requests <= 2 * got.requests + 5,
                  f"details' sidecar counted {tried.requests:.0f} tries for {got.requests:.0f} requests: "
                  "more than two tries per request")


LAB = LabSpec(
    name="05-resilience",
    title="Resilience: timeouts, retries, circuit breaking, outlier detection, rate limits",
    objectives=("Bound how long a caller waits (timeout) and read the UT flag",
                "Absorb transient failures with retries, and know Istio's default retry policy",
                "Refuse excess load (circuit breaking, UO) and eject failing endpoints (outlier detection)",
                "Cap what a workload accepts with a local rate limit (RL, 429)"),
    prerequisites=("Labs 01 and 04 (routes, faults)", "HTTP status codes 429, 500, 503, 504"),
    steps=(
        StepSpec("timeout", "A slow reviews call gives up after 0.5 s (UT) instead of holding the page",
                 fails_fast,
                 task="Give the calls to reviews (routed to v2) a timeout of 0.5 s.",
                 hint="rules.timeout(host, seconds, to=subset): the host is reviews, the subset v2.",
                 solution='rule = rules.timeout("reviews", "0.5s", to="v2")\nmesh.apply(rule)\nrule'),
        predict("predict-retries", "Predict: details fails half its requests with 500. What do users see?",
                "details answers HTTP 500 to half of its requests, and there is no retry rule yet. "
                "Istio's default retry policy (2 retries) applies. What share of the product pages show "
                "'product details are currently unavailable'?",
                ("a) about half: the default policy does not retry a 500",
                 "b) almost none: the default policy retries every 5xx twice",
                 "c) all of them"),
                "a) about half: the default policy does not retry a 500"),
        StepSpec("retries", "Retries turn most of details' failures into successes", retried,
                 task="Retry the calls to details up to 3 times, each try allowed 1 s.",
                 hint="rules.retries(host, attempts=..., per_try_timeout=...): its retry_on includes 5xx.",
                 solution='rule = rules.retries("details", attempts=3, per_try_timeout="1s")\n'
                          "mesh.apply(rule)\nrule"),
        StepSpec("circuit-breaker", "One connection, one pending request: the rest fail fast with "
                                    "UO", tripped,
                 task="Allow one connection and one pending request to details; keep its subset v1.",
                 hint="rules.circuit_breaker(host, max_connections=..., max_pending=..., subsets=(...)); "
                      "keep the subset v1 the baseline defines.",
                 solution='rule = rules.circuit_breaker("details", max_connections=1, max_pending=1, '
                          'subsets=("v1",))\nmesh.apply(rule)\nrule'),
        StepSpec("outlier-detection", "A dead reviews instance is ejected and gets no more requests", ejected,
                 task="Eject a reviews endpoint after one 5xx (keep the subsets v1, v2 and v3).",
                 hint="rules.outlier_detection(host, consecutive_errors=..., subsets=(...)); then send "
                      "traffic and check.",
                 solution='rule = rules.outlier_detection("reviews", consecutive_errors=1, interval="1s", '
                          'ejection_time="30s",\n                               subsets=("v1", "v2", "v3"))\n'
                          "mesh.apply(rule)\nrule"),
        StepSpec("rate-limit", "productpage serves 10 requests a second; the rest get 429 (RL)", limited,
                 task="Rate-limit productpage's inbound to 10 requests a second (a token bucket).",
                 hint="rules.rate_limit(workload, max_tokens=..., tokens_per_fill=..., fill_interval=...).",
                 solution='rule = rules.rate_limit("productpage", max_tokens=10, tokens_per_fill=10, '
                          'fill_interval="1s")\nmesh.apply(rule)\nrule'),
        StepSpec("challenge", "Challenge: a retry budget of one retry takes details' 30 % failures down to "
                              "about 9 %", retry_budget,
                 task="Make details fail 30 % of its requests with 503, give its calls exactly one retry, "
                      "then send 25 page views a second for 6 s. The check judges the traffic: about 30 % of "
                      "the tries fail, about 9 % of the answers productpage gets, at most two tries each.",
                 hint="resilience.make_flaky(mesh, service, rate=..., code=...), then rules.retries(host, "
                      "attempts=...): in Istio `attempts` counts the retries, not the first try.",
                 solution='print(resilience.make_flaky(mesh, "details", rate=0.3, code=503))\n'
                          'mesh.apply(rules.retries("details", attempts=1))\n'
                          "mesh.load(rps=25, duration=6).wait()"),
    ),
)
