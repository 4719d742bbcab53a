"""Service host names as Istio resources write them, resolved to one canonical form.

``reviews`` (in the resource's namespace), ``reviews.default``, ``reviews.default.svc`` and
``reviews.default.svc.cluster.local`` all name the same service. Anything else (an external
name, a wildcard) stays as written, lower-cased, and names no registry service.
"""

from __future__ import annotations

from dataclasses import dataclass

CLUSTER_SUFFIX = "svc.cluster.local"


@dataclass(frozen=True, slots=True)
class ServiceHost:
    """A host resolved to an in-mesh service name (``name`` is None for other hosts)."""

    host: str  # canonical: "reviews.default.svc.cluster.local" or the lower-cased host as written
    name: str | None
    namespace: str | None


def resolve_host(host: str, namespace: str) -> ServiceHost:
    """Resolve ``host`` written in a resource of ``namespace``."""
    lowered = host.strip().lower()
    parts = lowered.split(".")
    if "*" in lowered or not lowered or any(not part for part in parts):
        return ServiceHost(lowered, None, None)
    if len(parts) == 1:
        name, ns = parts[0], namespace
    elif ".".join(parts[2:]) in ("", "svc", CLUSTER_SUFFIX):
        name, ns = parts[0], parts[1]
    else:
        return ServiceHost(lowered, None, None)
    return ServiceHost(f"{name}.{ns}.{CLUSTER_SUFFIX}", name, ns)
