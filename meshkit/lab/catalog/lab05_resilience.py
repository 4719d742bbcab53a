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
    ),
)
