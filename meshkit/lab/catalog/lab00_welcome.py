"""Lab 00 — Welcome: the mesh is up, and requests cross it (ingress → productpage → reviews)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from meshkit.lab import checks
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB"]


def _setup(_mesh: Mesh, state: dict[str, Any]) -> None:
    state["started"] = time.time()


def mesh_is_up(mesh: Mesh, _lab: Lab) -> None:
    checks.require_healthy(mesh)


def traffic_flowed(mesh: Mesh, lab: Lab) -> None:
    window = checks.window_since(lab.state.get("started", time.time() - 60))
    checks.require_edge_traffic(mesh, "istio-ingressgateway", "productpage", min_requests=20, window=window)
    checks.require_edge_traffic(mesh, "productpage-v1", "reviews", min_requests=10, window=window)


def stars_everywhere(mesh: Mesh, _lab: Lab) -> None:
    """Behaviour, not the file or the command: the check's own page views show stars on every page,
    black (v2) and red (v3) about half each (exact binomial test), never v1's page without stars."""
    seen: dict[str, float] = {}
    for batch in (12, 28):  # a page without stars among the first 12 fails at once
        for version, count in checks.probe_versions(mesh, batch).items():
            seen[version] = seen.get(version, 0.0) + count
        views = round(sum(seen.values()))
        what = f"{views} page views sent by the check"
        checks.expect(seen.get("v1", 0) == 0,
                      f"{what}: reviews v1 (no stars) answered {seen.get('v1', 0):.0f} of them; apply a "
                      "VirtualService for reviews that routes to v2 and v3 only (meshkit apply -f FILE)")
    for version in ("v2", "v3"):
        checks.require_share(seen, version, 0.5, what=what)


CHALLENGE_CLI = """%%bash
# What a learner types in JupyterLab's terminal (File → New → Terminal), here as a %%bash cell.
cd "$(mktemp -d)"   # a scratch folder
cat > stars.yaml <<'YAML'
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
YAML
# ...apply it, and look at what the mesh now holds
meshkit apply -f stars.yaml
meshkit get vs
"""

LAB = LabSpec(
    name="00-welcome",
    title="Welcome: a service mesh you can read",
    objectives=("Name the parts of a mesh (control plane, sidecars, ingress) and see them run",
                "Send traffic through the ingress and read what the sidecars counted",
                "Use a lab: check a step, ask for a hint, see progress"),
    prerequisites=("Python basics (calling a function, reading a dict)", "HTTP requests and status codes"),
    setup=_setup,
    steps=(
        StepSpec("up", "Every workload runs and every sidecar has its config", mesh_is_up, exercise="none",
                 hint="Run the cells above; `meshkit status` in a terminal shows the same table.",
                 solution="mesh = connect()"),
        predict("predict-sidecars", "Predict: how many sidecars count one call from productpage to reviews?",
                "productpage calls reviews once. How many proxies see (and count) that call?",
                ("a) none: the apps talk directly", "b) one: the caller's sidecar",
                 "c) two: the caller's sidecar (outbound) and the callee's "
                 "(inbound)"), "c) two: the caller's "
                "sidecar (outbound) and the callee's (inbound)"),
        StepSpec("traffic", "Requests crossed the mesh: ingress → productpage → reviews", traffic_flowed,
                 task="Start a load of 20 requests a second for 5 seconds through the ingress (mesh.load).",
                 hint="mesh.load(rps=..., duration=...) starts it in the background; the next cells wait "
                      "for it.",
                 solution="mesh.load(rps=20, duration=5)"),
        StepSpec("challenge", "Challenge (terminal): every page shows stars, black and red half each",
                 stars_everywhere, exercise="cli",
                 task="In JupyterLab's terminal, write a file with a VirtualService for reviews that sends "
                      "half of its requests to subset v2 (black stars) and half to v3 (red stars), apply it "
                      "with `meshkit apply -f FILE`, then check here. The check sends its own 40 page views "
                      "and judges the stars statistically.",
                 hint="The YAML is a VirtualService (apiVersion networking.istio.io/v1, hosts: [reviews]) "
                      "with one http route holding two destinations, each with a subset and a weight of 50. "
                      "`meshkit apply --help` shows the options; `meshkit get virtualservices` what is "
                      "applied.",
                 solution=CHALLENGE_CLI),
    ),
)
