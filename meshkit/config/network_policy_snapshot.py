"""The snapshot's ``network_policy`` section: a proxy's own pod's NetworkPolicy egress, precompiled.

In Kubernetes a sidecar shares its pod's network namespace, so the pod's Egress NetworkPolicies
apply to the sidecar's upstream connections too: a sidecar in ``test-egress`` may reach the egress
gateway in a namespace labelled ``istio=system`` but not ``edition.cnn.com`` itself. The control
plane knows every destination a proxy can connect to (its clusters' endpoints, with their
namespace, pod labels and Service port, and the external stand-ins of the egress map), so it
judges each one here (`meshkit.config.network_policy.egress_allowed`) and the proxy only looks
the chosen address up when it connects (`meshkit.proxy.network_policy`): no rule evaluation and no
allocation on the proxy's request path.

The section is absent when no policy with ``Egress`` selects the proxy's pod (the pod is not
restricted) or when a rule allows every destination on every port. Otherwise it is
``{"policies": ["NetworkPolicy/ns/name", ...], "allowed": ["address:port", ...]}``: every other
address is dropped, including hosts outside the stand-in map (with ``--real-dns``).
An address that serves several clusters is allowed when any of them is (the local mesh's
instances each have their own port, so this only merges subsets of one Service).

Pure data: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshkit.config.network_policy import (
    Destination,
    NetworkPolicy,
    egress_allowed,
    namespace_label_map,
    selecting_egress,
)
from meshkit.config.registry import Node
from meshkit.config.resources import Resource


def _allows_everything(selecting: Sequence[NetworkPolicy]) -> bool:
    return any(not rule.ports and (not rule.to or any(p.ip_block is not None and p.ip_block.everything
                                                      for p in rule.to))
               for policy in selecting for rule in policy.spec.egress or [])


def network_policy_section(resources: Sequence[Resource], node: Node, clusters: Mapping[str, Any],
                           egress_hosts: Mapping[str, str]) -> dict[str, Any] | None:
    """``node``'s section (see the module), from its snapshot's ``clusters`` and the egress map
    (``"host:port"`` -> ``"address:port"``); None: nothing to enforce."""
    policies = [r for r in resources if isinstance(r, NetworkPolicy)]
    selecting = selecting_egress(policies, node.namespace, node.labels)
    if not selecting or _allows_everything(selecting):
        return None
    namespaces = namespace_label_map(resources)
    allowed: set[str] = set()
    for cluster in clusters.values():
        namespace, port = cluster.get("namespace"), int(cluster.get("port") or 0)
        for endpoint in cluster.get("endpoints") or []:
            to = Destination(namespace, endpoint.get("labels") or {}, port) if namespace else \
                Destination(None, {}, port)
            if egress_allowed(selecting, to, namespaces):
                allowed.add(f"{endpoint['address']}:{endpoint['port']}")
    for host_port, address in egress_hosts.items():
        port = int(host_port.rpartition(":")[2] or 0)
        if egress_allowed(selecting, Destination(None, {}, port), namespaces):
            allowed.add(address)
    return {"policies": sorted(p.ref for p in selecting), "allowed": sorted(allowed)}
