"""Lab 09 — Library, node agent, sidecar: the same calls through three shapes of mesh, measured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict, require_variable

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB"]

_HOW = 'bench = Comparison(mesh, service="details", path="/details/0", client="productpage-v1-0")'


def _bench(lab: Lab) -> Any:
    return require_variable(lab, "bench", _HOW)


def library(mesh: Mesh, lab: Lab) -> Any:
    return _bench(lab).check_library(mesh)


def node_agent(mesh: Mesh, lab: Lab) -> Any:
    return _bench(lab).check_node_agent(mesh)


def sidecar(mesh: Mesh, lab: Lab) -> Any:
    return _bench(lab).check_sidecar(mesh)


LAB = LabSpec(
    name="09-library-node-agent-sidecar",
    title="Library, node agent, sidecar",
    objectives=("Compare three shapes of a mesh (in-process library, shared node agent, sidecar) on the "
                "same calls", "Say what each shape costs (latency, processes) and what it isolates",
                "Place today's options (sidecars, ambient's ztunnel and waypoints, proxyless gRPC) in that "
                "map"),
    prerequisites=("Labs 00 and 06", "Latency percentiles"),
    steps=(
        predict("predict-latency", "Predict: which shape adds the most latency per call?",
                "The same 500 calls to details go (1) straight from an in-process library, (2) through one "
                "shared node proxy, (3) through the caller's and the callee's sidecars with mTLS. Which has "
                "the highest p50?",
                ("a) the library", "b) the node agent", "c) the sidecars: two proxies and a TLS hop"),
                "c) the sidecars: two proxies and a TLS hop"),
        StepSpec("library", "Library: the client balances, times out and retries by itself, no "
                            "proxy", library,
                 task="Measure the library shape: 500 requests, at most 10 s.",
                 hint="bench.library(requests=..., max_seconds=...) calls details' own port with the "
                      "in-process client.",
                 solution="bench.library(requests=500, max_seconds=10)"),
        StepSpec("node-agent", "Node agent: one shared proxy serves the traffic of every workload on the "
                               "node",
                 node_agent,
                 task="Measure the node-agent shape: 500 requests, at most 10 s.",
                 hint="bench.node_agent(...) starts ONE extra proxy process and sends the requests through "
                      "it.",
                 solution="bench.node_agent(requests=500, max_seconds=10)"),
        StepSpec("sidecar", "Sidecar: through productpage's sidecar and details' sidecar, mTLS between them",
                 sidecar,
                 task="Measure the sidecar shape: 500 requests, at most 10 s.",
                 hint="bench.sidecar(...) sends the requests to productpage's sidecar (its outbound port).",
                 solution="bench.sidecar(requests=500, max_seconds=10)"),
    ),
)
