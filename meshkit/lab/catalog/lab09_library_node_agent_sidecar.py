"""Lab 09 — Library, node agent, sidecar: the same calls through three shapes of mesh, measured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshkit.lab import checks
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict, require_variable
from meshkit.lab.checks import CheckFailed

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB"]

FAULT_RUN = 100
_HOW = 'bench = Comparison(mesh, service="details", path="/details/0", client="productpage-v1-0")'


def _bench(lab: Lab) -> Any:
    return require_variable(lab, "bench", _HOW)


def library(mesh: Mesh, lab: Lab) -> Any:
    return _bench(lab).check_library(mesh)


def node_agent(mesh: Mesh, lab: Lab) -> Any:
    return _bench(lab).check_node_agent(mesh)


def sidecar(mesh: Mesh, lab: Lab) -> Any:
    return _bench(lab).check_sidecar(mesh)


def _after(mesh: Mesh, lab: Lab, shape: str, call: str) -> Any:
    result = _bench(lab).results.get(shape)
    changed = mesh.last_change()
    if result is None or result.started < changed or result.requests < FAULT_RUN:
        raise CheckFailed(f"measure the {shape} shape again after applying the fault, with at least "
                          f"{FAULT_RUN} requests: {call}")
    return result


def fault_seen(mesh: Mesh, lab: Lab) -> None:
    """Behaviour on the runs themselves: after a 50 % abort on details, the sidecar run's answers are
    503 about half the time (exact binomial test), the library's never, and the node agent's as its
    own config says: it copied the routes when it started, so a fault applied later never reaches it."""
    bench = _bench(lab)
    sidecar_run = _after(mesh, lab, "sidecar", "bench.sidecar(requests=200)")
    node_run = _after(mesh, lab, "node agent", "bench.node_agent(requests=200)")
    library_run = _after(mesh, lab, "library", "bench.library(requests=200)")

    def aborted(result: Any) -> dict[str, float]:
        hits = result.codes.get(503, 0)
        return {"503": hits, "other": result.requests - hits}

    checks.require_share(aborted(sidecar_run), "503", 0.5, what="the sidecar run after the fault")
    checks.expect(library_run.codes.get(503, 0) == 0,
                  f"the library run got {library_run.codes.get(503, 0)} answers 503: it calls the app's own "
                  "port, where no mesh fault exists")
    node_started = float(getattr(bench.node, "snapshot_at", 0.0) or 0.0)
    expected = 0.5 if node_started > mesh.last_change() else 0.0
    checks.require_share(aborted(node_run), "503", expected,
                         what=f"the node agent run (its proxy started {'after' if expected else 'before'} "
                              "the fault, with a copy of the config of that moment)")


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
        StepSpec("challenge", "Challenge: a fault on details, measured through all three shapes", fault_seen,
                 task="Abort half of the calls to details with HTTP 503 (a fault in a VirtualService), "
                      "then measure all three shapes again, 200 requests each. The check judges each run's "
                      "answers: which shapes see the fault, and how often?",
                 hint="from meshkit.lab import rules; rules.fault(host, abort=..., percent=...); then "
                      "bench.library(requests=200), bench.node_agent(requests=200), "
                      "bench.sidecar(requests=200).",
                 solution='from meshkit.lab import rules\n\n'
                          'mesh.apply(rules.fault("details", abort=503, percent=50))\n'
                          "for measure in (bench.library, bench.node_agent, bench.sidecar):\n"
                          "    print(measure(requests=200, max_seconds=10))"),
    ),
)
