"""Lab 02 — Canary: shift 10 %, then 50 % (with the slider), then all of reviews' traffic to v3."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshkit.lab import checks
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict, require_sticky_split

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB"]


def _split(mesh: Mesh, weights: dict[str, int]) -> None:
    """The rule's default route has ``weights`` and the traffic since the change matches them
    (exact binomial test: 50/50 where 90/10 is asked fails; noise around 90/10 does not)."""
    checks.require_weights(mesh, "reviews", weights)
    counts = checks.require_traffic(mesh, "reviews", {}, min_requests=40)
    for version in ("v1", "v2", "v3"):
        checks.require_share(counts, version, weights.get(version, 0) / 100,
                             what="reviews' requests since your last change")


def ten_percent(mesh: Mesh, _lab: Lab) -> None:
    _split(mesh, {"v1": 90, "v3": 10})


def half(mesh: Mesh, _lab: Lab) -> None:
    _split(mesh, {"v1": 50, "v3": 50})


def promoted(mesh: Mesh, _lab: Lab) -> None:
    checks.require_weights(mesh, "reviews", {"v3": 100})
    checks.require_traffic(mesh, "reviews", {"v3": (0.95, 1.0)})


def challenge(mesh: Mesh, _lab: Lab) -> None:
    require_sticky_split(mesh, user="jason", to="v3", others={"v1": 0.9, "v3": 0.1, "v2": 0.0},
                         other_pages=100)


LAB = LabSpec(
    name="02-canary",
    title="Canary releases",
    objectives=("Shift a share of traffic to a new version with weighted routes",
                "Judge a canary by the traffic it got, not by the rule you wrote",
                "Promote (or roll back) a version through the config history"),
    prerequisites=("Lab 01 (VirtualService, subsets)",),
    steps=(
        StepSpec("canary-10", "10 % of reviews traffic to v3", ten_percent,
                 task="Apply a canary that sends 90 % of reviews' requests to v1 and 10 % to v3.",
                 hint="rules.canary(host, {subset: weight, ...}); the weights add up to 100.",
                 solution='rule = rules.canary("reviews", {"v1": 90, "v3": 10})\nmesh.apply(rule)\nrule',
                 traffic="mesh.load(rps=25, duration=5).wait()"),
        predict("predict-share", "Predict: how many of 100 requests reach v3 at 10 %?",
                "With weights 90/10, you send 100 requests. How many does v3 answer?",
                ("a) exactly 10, every time", "b) about 10: a random draw, so 4 to 17 is normal",
                 "c) none until the load is high "
                 "enough"), "b) about 10: a random draw, so 4 to 17 is normal"),
        StepSpec("canary-50", "Half of the traffic on v3, set with the slider", half,
                 task="Move the canary to 50 % with the slider above (or set slider.slider.value in code).",
                 hint="Drag the slider to 50 (or set slider.slider.value = 50), then send traffic.",
                 solution="slider.slider.value = 50   # the same as dragging it to 50",
                 traffic="mesh.load(rps=25, duration=5).wait()"),
        StepSpec("promote", "v3 takes all the traffic", promoted,
                 task="Promote v3: all of reviews' traffic to v3.",
                 hint="A canary with a single subset at 100 %.",
                 solution='mesh.apply(rules.canary("reviews", {"v3": 100}))',
                 traffic="mesh.load(rps=25, duration=5).wait()"),
        StepSpec("challenge", "Challenge: Jason always sees v3 while everyone else stays 90/10", challenge,
                 task="Roll back to the 10 % canary (mesh.history(), mesh.rollback(n)) and make it sticky "
                      "for "
                      "Jason. The check sends its own page views and judges them statistically.",
                 hint="A route matching the end-user header jason comes first; the weighted route last.",
                 solution='mesh.apply(rules.virtual_service("reviews", [\n'
                          '    {"match": [{"headers": {"end-user": {"exact": "jason"}}}],\n'
                          '     "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},\n'
                          '    {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": '
                          '90},\n'
                          '               {"destination": {"host": "reviews", "subset": "v3"}, "weight": '
                          '10}]},\n'
                          ']))'),
    ),
)
