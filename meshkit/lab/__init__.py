"""meshkit.lab: the notebook side of meshkit — what a learner types in a lab.

`connect()` gives a `Mesh` (apply/get/delete/analyze/history/rollback/status/load), `rules` builds
real Istio resources that show their YAML, `Lab`/`Step` run checks against the mesh's real state
and traffic with hints, hidden solutions and stored progress, `charts` draws live plotly figures
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
    "LoadHandle": "meshkit.lab.mesh",
    "CurlResult": "meshkit.runtime.curl",
    "LabError": "meshkit.lab.display",
    "Lab": "meshkit.lab.steps",
    "Step": "meshkit.lab.steps",
    "CheckResult": "meshkit.lab.steps",
    "CheckFailed": "meshkit.lab.checks",
    "canary": "meshkit.lab.rules",
    "route": "meshkit.lab.rules",
    "ab_test": "meshkit.lab.rules",
    "mirror": "meshkit.lab.rules",
    "fault": "meshkit.lab.rules",
    "timeout": "meshkit.lab.rules",
    "retries": "meshkit.lab.rules",
    "circuit_breaker": "meshkit.lab.rules",
    "outlier_detection": "meshkit.lab.rules",
    "rate_limit": "meshkit.lab.rules",
    "mtls": "meshkit.lab.rules",
    "allow": "meshkit.lab.rules",
    "deny": "meshkit.lab.rules",
    "Rule": "meshkit.lab.display",
    "join": "meshkit.lab.attend",
    "instructor": "meshkit.lab.attend",
}

__all__ = [
    "CheckFailed",
    "CheckResult",
    "CurlResult",
    "Lab",
    "LabError",
    "LoadHandle",
    "Mesh",
    "Rule",
    "Step",
    "ab_test",
    "allow",
    "canary",
    "circuit_breaker",
    "connect",
    "deny",
    "fault",
    "instructor",
    "join",
    "mirror",
    "mtls",
    "outlier_detection",
    "rate_limit",
    "retries",
    "route",
    "timeout",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'meshkit.lab' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
