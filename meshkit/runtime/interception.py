"""The local mesh's outbound interception settings: stored with the mesh, asked per connection.

`meshkit up --set values.global.proxy.includeIPRanges=...` (istioctl install's values) stores the
mesh-wide `Interception` in the mesh's home (``proxy-values.json``, as istioctl install writes the
sidecar injector's values); `intercepts` says whether a pod's connection to a host goes through its
sidecar, from the host's notional address (`meshkit.config.ip_ranges`) and the pod's
``traffic.sidecar.istio.io/include|excludeOutboundIPRanges`` annotations (its status row's
``ip_ranges``), which replace the mesh-wide values. With no file and no annotation: Istio's default,
everything intercepted.

It must not: open connections (`meshkit.runtime.curl` does) or parse ranges (`meshkit.config.ip_ranges`).
"""

from __future__ import annotations

import json
from typing import Any

from meshkit.config.ip_ranges import Interception, IPAddress, cluster_ip, external_ip, literal
from meshkit.runtime.state import StateDir

VALUES_FILE = "proxy-values.json"


def read(state: StateDir) -> Interception:
    """The mesh-wide interception settings (Istio's default when none were set, or unreadable)."""
    try:
        data = json.loads((state.root / VALUES_FILE).read_text(encoding="utf-8"))
        return Interception.from_json(data) if isinstance(data, dict) else Interception()
    except (OSError, ValueError):
        return Interception()


def write(state: StateDir, interception: Interception) -> None:
    """Store the settings (the default removes the file: back to intercepting everything)."""
    path = state.root / VALUES_FILE
    if interception.default:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps(interception.to_json()), encoding="utf-8")


def address_of(workloads: list[dict[str, Any]], host: str, service: str, namespace: str) -> IPAddress:
    """The notional address ``host`` resolves to: a literal, a mesh Service's cluster IP, else outside."""
    found = literal(host)
    if found is not None:
        return found
    if any(w["service"] == service and str(w.get("namespace") or "default") == namespace for w in workloads):
        return cluster_ip(service, namespace)
    return external_ip(host)


def intercepts(state: StateDir, workloads: list[dict[str, Any]], row: dict[str, Any], host: str, *,
               service: str, namespace: str) -> bool:
    """Whether ``row``'s pod (a `meshkit status` row, with a sidecar) sends its connection to ``host``
    through its sidecar: the mesh-wide settings, replaced by its pod's annotations (``ip_ranges``).
    `IPRangeError` for a bad annotation, naming it."""
    interception = read(state).for_pod(row.get("ip_ranges") or {})
    return interception.default or interception.intercepts(address_of(workloads, host, service, namespace))
