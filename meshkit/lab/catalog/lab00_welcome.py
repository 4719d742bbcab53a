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
    ),
)
