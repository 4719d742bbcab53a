"""Lab 03 — Mirroring: users get v1 while v2 receives a copy of every (then half of the) request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshkit.lab import checks
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB"]


def _mirrored(mesh: Mesh, primary: str, to: str, expected: float) -> None:
    """Users answered by ``primary`` only; ``to`` received copies of ``expected`` of them (exact
    binomial test over the requests since the change; 100 % is judged as at least 80 %)."""
    checks.require_mirrored(mesh, "reviews", primary=primary, to=to, share=(0.0, 1.1))
    served = checks.requests_by_version(mesh, "reviews").get(primary, 0.0)
    received = checks.requests_by_version(mesh, "reviews", reporter="destination").get(to, 0.0)
    if expected >= 1.0:
        checks.expect(received >= 0.8 * served, f"{to} received {received:.0f} copies for {served:.0f} "
                                                f"requests "
                                                f"answered by {primary}; the step wants a copy of every one")
        return
    copies = {to: min(received, served), "not copied": max(0.0, served - received)}
    checks.require_share(copies, to, expected, what=f"copies of the {served:.0f} requests {primary} answered")


def mirrored_all(mesh: Mesh, _lab: Lab) -> None:
    _mirrored(mesh, "v1", "v2", 1.0)


def mirrored_half(mesh: Mesh, _lab: Lab) -> None:
    _mirrored(mesh, "v1", "v2", 0.5)


def challenge(mesh: Mesh, _lab: Lab) -> None:
    rule = checks.require_rule(mesh, "VirtualService", "reviews")
    mirrors = [h.get("mirror", {}).get("subset") for h in rule.get("spec", {}).get("http", []) or []]
    checks.expect("v3" in mirrors, f"reviews mirrors to {[m for m in mirrors if m] or 'nothing'}; "
                                   "the challenge mirrors to v3")
    answered = checks.require_traffic(mesh, "reviews", {"v3": (0.0, 0.0)}, min_requests=40)
    checks.require_share(answered, "v2", 0.1, what="reviews' answers since your last change")
    checks.require_share(answered, "v1", 0.9, what="reviews' answers since your last change")
    received = checks.requests_by_version(mesh, "reviews", reporter="destination").get("v3", 0.0)
    total = sum(answered.values())
    checks.expect(received >= 0.8 * total, f"v3 received {received:.0f} copies of {total:.0f} requests; "
                                           "it should get a copy of (almost) every one")


LAB = LabSpec(
    name="03-mirroring",
    title="Traffic mirroring (shadowing)",
    objectives=("Mirror live requests to a new version while users are answered by the old one",
                "Read who answered (source reporter) and who received a copy (destination reporter)",
                "Know the risk: a mirrored request runs its side effects twice"),
    prerequisites=("Labs 01 and 02 (routes, subsets, weights)",),
    steps=(
        predict("predict-side-effects", "Predict: what happens to a mirrored POST?",
                "reviews v1 answers the users and v2 gets a mirrored copy of each request. A request is a "
                "POST that writes a review. What happens?",
                ("a) the review is written twice: by v1 and again by v2 (side effects are duplicated)",
                 "b) only v1 writes it: the mesh mirrors GETs only",
                 "c) v2 writes it and v1 does not"),
                "a) the review is written twice: by v1 and again by v2 (side effects are duplicated)"),
        StepSpec("mirror-100", "Users get v1; v2 receives a copy of every request", mirrored_all,
                 task="Apply a rule: users are answered by v1, and v2 gets a copy of every request.",
                 hint="rules.mirror(host, to=subset, percent=..., primary=subset)",
                 solution='rule = rules.mirror("reviews", to="v2", percent=100, primary="v1")\n'
                          "mesh.apply(rule)\nrule"),
        StepSpec("mirror-50", "v2 receives a copy of about half the requests", mirrored_half,
                 task="Mirror only half of the requests to v2 (users still answered by v1).",
                 hint="The same rule with another percent.",
                 solution='mesh.apply(rules.mirror("reviews", to="v2", percent=50, primary="v1"))'),
        StepSpec("challenge", "Challenge: 10 % of users on v2 while v3 gets a copy of every "
                              "request", challenge,
                 task="A canary and a shadow at once: 90 % of reviews' requests answered by v1 and 10 % by "
                      "v2, and a copy of every request to v3. Then send traffic.",
                 hint="One route with two weighted destinations and a mirror: rules.virtual_service(host, "
                      "[{...}]) lets you write it as Istio's http route.",
                 solution='mesh.apply(rules.virtual_service("reviews", [{\n'
                          '    "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": '
                          '90},\n'
                          '              {"destination": {"host": "reviews", "subset": "v2"}, "weight": '
                          '10}],\n'
                          '    "mirror": {"host": "reviews", "subset": "v3"},\n'
                          '    "mirrorPercentage": {"value": 100.0}}]))\n'
                          "mesh.load(rps=20, duration=6).wait()"),
    ),
)
