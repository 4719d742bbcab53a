"""Lab 01 — Request routing: a VirtualService pins reviews to v1, then sends Jason to v2."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshkit.lab import checks
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict, require_sticky_split

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB"]


def all_to_v1(mesh: Mesh, _lab: Lab) -> None:
    checks.require_weights(mesh, "reviews", {"v1": 100})
    checks.require_traffic(mesh, "reviews", {"v1": (0.95, 1.0)})


def jason_to_v2(mesh: Mesh, _lab: Lab) -> None:
    checks.require_header_route(mesh, "reviews", header="end-user", value="jason", to="v2")
    checks.require_weights(mesh, "reviews", {"v1": 100})
    checks.require_traffic(mesh, "reviews", {"v2": (0.1, 0.6), "v3": (0.0, 0.0)})


def challenge(mesh: Mesh, _lab: Lab) -> None:
    require_sticky_split(mesh, user="jason", to="v3", others={"v1": 0.5, "v2": 0.5, "v3": 0.0})


CHALLENGE_YAML = """%%mesh apply
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v3}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v2}
      weight: 50
"""

LAB = LabSpec(
    name="01-request-routing",
    title="Request routing",
    objectives=("Route all requests of a service to one version with a VirtualService",
                "Route one user's requests by header match (A/B) and keep a default route",
                "Tell a config error the analyzer catches from the outage Istio would let happen"),
    prerequisites=("Lab 00", "Reading YAML"),
    steps=(
        StepSpec("all-v1", "All reviews traffic goes to v1", all_to_v1,
                 task="Apply a rule that sends every request for reviews to subset v1.",
                 hint="rules.route(host, to=subset) builds a VirtualService; mesh.apply(...) applies it.",
                 solution='rule = rules.route("reviews", to="v1")\nmesh.apply(rule)\nrule'),
        predict("predict-subset", "Predict: what does Istio do with a route to a subset nobody defined?",
                "A VirtualService sends reviews to subset v9, and no DestinationRule defines v9. "
                "In Istio (no meshkit analyzer in the way), what happens?",
                ("a) Istio refuses the VirtualService", "b) Istio accepts it, and requests to reviews fail "
                 "with 503 until a DestinationRule defines v9", "c) requests fall back to any version"),
                "b) Istio accepts it, and requests to reviews fail with 503 until a DestinationRule "
                "defines v9"),
        StepSpec("jason-v2", "Jason sees v2, everyone else v1", jason_to_v2,
                 task="Apply a rule that sends the requests of user jason (header end-user: jason) to v2 "
                      "and everyone else to v1.",
                 hint="productpage forwards the signed-in user as the `end-user` header: match on it "
                      "(rules.ab_test(host, header=..., value=..., to=..., default=...)).",
                 solution='rule = rules.ab_test("reviews", header="end-user", value="jason", to="v2", '
                          'default="v1")\nmesh.apply(rule)\nrule'),
        StepSpec("challenge", "Challenge: Jason always sees v3, everyone else 50/50 on v1 and v2", challenge,
                 exercise="yaml",
                 task="Write the VirtualService for reviews: Jason (end-user: jason) to v3, everyone else "
                      "split 50/50 between v1 and v2. The check sends its own page views and judges them.",
                 hint="Two http routes: the first with a headers match and one destination, the last with "
                      "two destinations that carry a weight each.",
                 solution=CHALLENGE_YAML),
    ),
)
