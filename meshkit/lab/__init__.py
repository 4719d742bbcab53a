"""meshkit.lab: the notebook side of meshkit — what a learner types in a lab.

`connect()` gives a `Mesh` (apply/get/delete/analyze/history/rollback/status/load), `rules` builds
real Istio resources that show their YAML, `Lab`/`Step` run the checks of `catalog` (one module per
lab: steps, checks, hints, solutions) against the mesh's real state and traffic, with stored
progress; `editions` makes a notebook's learner and reference editions and `magic` is the
``%%mesh apply`` cell magic; `charts` draws live plotly figures
from the telemetry API and `widgets` offers the canary slider and the YAML rule editor.
`observe` reads RED numbers, Istio's metrics, access logs and request traces from the mesh, and
`prometheus` runs a real Prometheus against its sidecars where the binary is installed.
`security` shows workload certificates, the bytes on the wire (TLS or plaintext) and who may call
whom, for the mTLS and authorization labs (certificates and their rotation live in `certs`,
which `security` re-exports).

It sits above `meshkit.runtime` and `meshkit.control` (it drives them through their public APIs)
and below the CLI. It must not reach into the control plane's or the sidecar's internals, keep
module-level mutable state, or block a notebook cell on anything unbounded. Heavy notebook
libraries (ipywidgets, plotly) are imported only by the modules that draw.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC: dict[str, str] = {
    "connect": "meshkit.lab.mesh",
    "Mesh": "meshkit.lab.mesh",
    "Lab": "meshkit.lab.steps",
    "Step": "meshkit.lab.steps",
    "CheckResult": "meshkit.lab.steps",
    "CheckFailed": "meshkit.lab.checks",
    "LabError": "meshkit.lab.display",
    "join": "meshkit.lab.attend",
    "instructor": "meshkit.lab.attend",
}

# The learner API has one spelling, the one the labs teach: a few names at the top
# (``from meshkit.lab import Lab, connect``) and everything else in its submodule
# (``rules.canary(...)``, ``checks.require_traffic(...)``, ``charts.service_graph(...)``).
SUBMODULES = ("catalog", "charts", "checks", "editions", "history", "magic", "observe", "prometheus",
              "resilience", "rules", "security", "widgets")

__all__ = [
    "CheckFailed",
    "CheckResult",
    "Lab",
    "LabError",
    "Mesh",
    "Step",
    "connect",
    "instructor",
    "join",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is not None:
        return getattr(importlib.import_module(module), name)
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'meshkit.lab' has no attribute {name!r}")
