"""Kubernetes NetworkPolicy egress for connections the local mesh opens itself on a pod's behalf.

A pod without a sidecar (sleep in a namespace without injection) has no proxy to enforce anything:
`meshkit exec POD -- curl URL` connects straight to the stand-in or to an instance of the service
(`meshkit.runtime.curl`). On Kubernetes the CNI would drop that connection's packets when an Egress
NetworkPolicy selects the pod and none of its rules allows the destination; `EgressGate` answers the
same question here (`meshkit.config.network_policy.egress_allowed`) and `dropped` says what curl then
prints: after ``--connect-timeout`` (or `DROP_SECONDS`, a short stand-in for the kernel's two minutes
of SYN retries) ``Failed to connect to HOST port PORT after N ms: Connection timed out``, curl's
exit 28.

Connections through a sidecar are judged by the sidecar itself (`meshkit.proxy.network_policy`).
It must not start processes or change the mesh: it reads the control plane's store once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshkit.config.network_policy import (
    Destination,
    NetworkPolicy,
    egress_allowed,
    namespace_label_map,
    selecting_egress,
)
from meshkit.config.workloads import Namespace
from meshkit.control.client import ApiError, ControlUnreachable

if TYPE_CHECKING:
    from meshkit.runtime.local import LocalMesh

DROP_SECONDS = 2.0  # how long a dropped connect "hangs" before curl's timeout, without --connect-timeout


@dataclass(frozen=True)
class EgressGate:
    """The store's NetworkPolicies and namespace labels, and every instance's pod labels."""

    policies: tuple[NetworkPolicy, ...]
    namespaces: Mapping[str, Mapping[str, str]]
    pod_labels: Mapping[str, Mapping[str, str]]  # instance name -> its pod labels

    def allows(self, source: Mapping[str, Any], to: Mapping[str, Any] | None, port: int) -> bool:
        """May the pod of status row ``source`` connect to the pod of row ``to`` (None: a host outside
        the cluster, the external stand-ins) on ``port`` (the URL's, i.e. the Service's port)?"""
        namespace = str(source.get("namespace") or "default")
        selecting = selecting_egress(self.policies, namespace, self._labels(source))
        if not selecting:
            return True
        destination = Destination(None, {}, port) if to is None else Destination(
            str(to.get("namespace") or "default"), self._labels(to), port)
        return egress_allowed(selecting, destination, self.namespaces)

    def _labels(self, row: Mapping[str, Any]) -> Mapping[str, str]:
        return self.pod_labels.get(str(row.get("name")), {"app": str(row.get("service") or "")})


def gate_from(items: Sequence[Mapping[str, Any]], pod_labels: Mapping[str, Mapping[str, str]]) -> EgressGate:
    """The gate from the store's items (``ControlClient.get()["items"]``: ``{"resource": doc, ...}``)."""
    policies, namespaces = [], []
    for item in items:
        doc = item.get("resource") or {}
        if doc.get("kind") == "NetworkPolicy":
            policies.append(NetworkPolicy.model_validate(doc))
        elif doc.get("kind") == "Namespace":
            namespaces.append(Namespace.model_validate(doc))
    return EgressGate(tuple(policies), namespace_label_map(namespaces), dict(pod_labels))


def mesh_egress_gate(mesh: LocalMesh) -> EgressGate | None:
    """The gate of a running local mesh (None when its control plane does not answer: nothing dropped)."""
    record = mesh.record()
    if record is None:
        return None
    try:
        items = mesh.client(timeout=10.0).get()["items"]
    except (ApiError, ControlUnreachable):
        return None
    return gate_from(items, {inst.name: inst.spec.labels for inst in mesh.instances(record)})


def dropped(host: str, port: int, connect_timeout: float | None, max_time: float) -> str:
    """Wait as a connection whose SYNs are dropped does, then curl's words for it (exit 28)."""
    seconds = min(connect_timeout if connect_timeout is not None else DROP_SECONDS, max_time)
    time.sleep(seconds)
    return f"Failed to connect to {host} port {port} after {round(seconds * 1000)} ms: Connection timed out"
