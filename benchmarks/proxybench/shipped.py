"""The mesh as `meshkit up` ships it, for the benchmarks that measure what learners run.

``meshkit up --app httpbin --app clients`` with httpbin-v2 scaled to 0 (so every request from the
sleep pod crosses the same two sidecars): the snapshots, mutual TLS, access logs and telemetry
exactly as shipped. It must not load the mesh; the benchmarks using it do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshkit.runtime.local import LocalMesh
from meshkit.runtime.ports import free_bases
from meshkit.runtime.state import StateDir
from proxybench.processes import HarnessError

PATH, HOST = "/bytes/1024", "httpbin:8000"  # 1 KB answers, Istio's method


def start_mesh(home: Path) -> tuple[LocalMesh, dict[str, Any]]:
    """The mesh in ``home`` on a free block of ports; its workloads by instance name."""
    mesh = LocalMesh(StateDir.open(home))
    base = next(free_bases(4), None)
    if base is None:
        raise HarnessError("no free block of ports below the ephemeral range for the mesh")
    status = mesh.up(["httpbin", "clients"], {"httpbin-v2": 0}, base_port=base, timeout=60.0)
    return mesh, {w["name"]: w for w in status["workloads"]}


def outbound_port(sleep: dict[str, Any]) -> int:
    """The port of the sleep pod's sidecar that its apps use as ``HTTP_PROXY``."""
    return int(sleep["outbound_proxy"].rsplit(":", 1)[1])
