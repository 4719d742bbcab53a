"""Lab 04 — Fault injection: a 7 s delay for Jason reveals a timeout bug; reviews v3 fixes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshkit.lab import checks
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB", "SORRY"]

SORRY = "product reviews are currently unavailable"


def delay_breaks_jason(mesh: Mesh, _lab: Lab) -> None:
    checks.require_fault(mesh, "ratings", kind="delay", header="end-user", value="jason")
    page = mesh.visit(user="jason")
    checks.expect(page.seconds >= 5 and page.says(SORRY),
                  f"Jason's page took {page.seconds:.1f} s and "
                  f"{'shows' if page.says(SORRY) else 'does not show'} "
                  "the reviews error; with a 7 s delay on ratings for Jason, his page should degrade")


def fixed(mesh: Mesh, _lab: Lab) -> None:
    checks.require_fault(mesh, "ratings", kind="delay", header="end-user", value="jason")
    page = mesh.visit(user="jason")
    checks.expect(not page.says(SORRY), f"Jason's page still says '{SORRY}' ({page})")
    checks.expect(page.seconds < 4.5, f"Jason's page took {page.seconds:.1f} s; it should answer in under "
                                      f"4.5 s")


def half_aborted(mesh: Mesh, _lab: Lab) -> None:
    """An abort fault on ratings fails about half of the calls to it since the change (exact
    binomial test over the calls the callers' sidecars counted): all or none fails the check."""
    checks.require_fault(mesh, "ratings", kind="abort")
    window = checks.window_since_change(mesh)
    edges = mesh.telemetry(window, destination="ratings", reporter="source")["edges"]
    calls = sum(float(e.get("requests", 0)) for e in edges)
    failed = sum(float(e.get("requests", 0)) * float(e.get("error_rate", 0)) for e in edges)
    checks.require_share({"failed": failed, "answered": calls - failed}, "failed", 0.5,
                         what="calls to ratings since your last change")


LAB = LabSpec(
    name="04-fault-injection",
    title="Fault injection",
    objectives=("Inject a delay for one user only, without touching any app",
                "Find a bug in the interplay of two timeouts by testing, not by reading code",
                "Fix it by routing, while the fault stays in place"),
    prerequisites=("Lab 01 (header matches)", "What a timeout is"),
    steps=(
        predict("predict-delay", "Predict: what does Jason see with a 7 s delay on ratings?",
                "Jason's calls to ratings will be delayed by 7 s. reviews v2 (Jason's version) calls ratings "
                "and waits for it; productpage calls reviews and waits for it. What will Jason see?",
                ("a) the full page, stars included, after about 7 s",
                 "b) the page without reviews, after a few seconds",
                 "c) an error page from the ingress"),
                "b) the page without reviews, after a few seconds"),
        StepSpec("delay", "A 7 s delay on ratings, for Jason only", delay_breaks_jason,
                 task="Inject a 7 s delay into the calls to ratings for the requests of user jason only.",
                 hint="rules.fault(host, delay=..., match={header: value}, to=subset) — the host is ratings.",
                 solution='rule = rules.fault("ratings", delay="7s", match={"end-user": "jason"}, to="v1")\n'
                          "mesh.apply(rule)\nrule"),
        StepSpec("fix", "Jason's page answers quickly again (the delay stays)", fixed,
                 task="Keep the delay, and make Jason's page whole and fast again by routing him elsewhere.",
                 hint="reviews v3 waits only 2.5 s for ratings: shorter than productpage's 3 s.",
                 solution='mesh.apply(rules.ab_test("reviews", header="end-user", value="jason", to="v3", '
                          'default="v1"))'),
        StepSpec("challenge", "Challenge: half of the calls to ratings are aborted with HTTP 500",
                 half_aborted,
                 task="Abort 50 % of the calls to ratings with HTTP 500, then send 20 page views a second "
                      "for 6 s as Jason (whose reviews version calls ratings).",
                 hint='rules.fault(host, abort=..., percent=...); mesh.load(..., users={"jason": 1.0}).',
                 solution='mesh.apply(rules.fault("ratings", abort=500, percent=50))\n'
                          'mesh.load(rps=20, duration=6, users={"jason": 1.0}).wait()'),
    ),
)
