"""meshkit.lab.history: lab 09, library vs node agent vs sidecar, measured on the running mesh.

`Comparison(mesh)` measures one destination three ways with real processes: a client library in
the caller (`library.ResilientClient`), one shared node proxy (`node_agent.NodeProxy`, a real
``python -m meshkit.proxy``), and the mesh's own two sidecars; `measure` times bounded runs.

It must not leave processes behind (the node proxy stops on ``close()``, ``with``, interpreter
exit and the death of its parent), send traffic off 127.0.0.1, or change the mesh's config.
"""

from meshkit.lab.history.compare import CAPABILITIES, SHAPES, Comparison, capabilities
from meshkit.lab.history.library import Answer, ProxiedClient, RequestFailed, ResilientClient
from meshkit.lab.history.measure import Measurement, percentile, run_bounded
from meshkit.lab.history.node_agent import NodeProxy, node_snapshot

__all__ = [
    "CAPABILITIES",
    "SHAPES",
    "Answer",
    "Comparison",
    "Measurement",
    "NodeProxy",
    "ProxiedClient",
    "RequestFailed",
    "ResilientClient",
    "capabilities",
    "node_snapshot",
    "percentile",
    "run_bounded",
]
