"""Hand-written sidecar snapshots (docs/snapshot.md, schema 1) for the benchmark's meshkit targets.

"Realistic" means what a small canary setup compiles to: a VirtualService for host ``bench`` whose
first route sends ``end-user: jason`` to subset v2 and whose default route splits 90/10 across
v1/v2, Istio's default retry policy written out, LEAST_REQUEST balancing. Both subsets point at
the same endpoint, so every request still reaches the one upstream. The benchmark writes these by
hand (no meshkit.config import) so that it measures only the sidecar process.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

NAMESPACE = "default"
SERVICE = "bench"
SERVICE_PORT = 80
CLIENT = "bench-client"
TLS_DISABLE: dict[str, Any] = {"mode": "DISABLE"}
ISTIO_DEFAULT_RETRIES: dict[str, Any] = {
    "attempts": 2,
    "per_try_timeout_ms": None,
    "retry_on": ["connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"],
    "retriable_status_codes": [503],
}


@dataclass(frozen=True)
class Destination:
    """Where the ``bench`` clusters send traffic: the upstream itself, or a server sidecar's inbound."""

    port: int
    has_sidecar: bool
    workload: str = "bench-upstream"


def identity(service_account: str) -> str:
    return f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{service_account}"


def with_version(doc: dict[str, Any]) -> dict[str, Any]:
    """Set ``version``: the first 16 hex chars of sha256 over the canonical JSON of the rest."""
    body = {key: value for key, value in doc.items() if key != "version"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return {**body, "version": hashlib.sha256(canonical).hexdigest()[:16]}


def _node(workload: str, service: str | None, version: str | None) -> dict[str, Any]:
    labels = {"app": service or workload} | ({"version": version} if version else {})
    return {
        "id": f"{workload}-0.{NAMESPACE}", "workload": workload, "instance": f"{workload}-0",
        "namespace": NAMESPACE, "service": service, "version": version, "labels": labels,
        "identity": identity(workload), "kind": "sidecar",
    }


def _route(name: str, index: int, match: list[dict[str, Any]], split: dict[str, int]) -> dict[str, Any]:
    return {
        "name": name,
        "source": f"VirtualService/{NAMESPACE}/{SERVICE}#http[{index}]",
        "match": match,
        "route": [{"cluster": cluster, "weight": weight, "headers": None}
                  for cluster, weight in split.items()],
        "headers": None, "rewrite": None, "fault": None, "mirror": None,
        "timeout_ms": None, "retries": ISTIO_DEFAULT_RETRIES,
    }


def _virtual_host() -> dict[str, Any]:
    fqdn = f"{SERVICE}.{NAMESPACE}.svc.cluster.local"
    names = [SERVICE, f"{SERVICE}.{NAMESPACE}", f"{SERVICE}.{NAMESPACE}.svc", fqdn]
    return {
        "name": f"{fqdn}:{SERVICE_PORT}",
        "service": SERVICE,
        "domains": [*names, *(f"{name}:{SERVICE_PORT}" for name in names)],
        "port": SERVICE_PORT,
        "routes": [
            _route("bench-jason", 0, [{"headers": {"end-user": {"exact": "jason"}}}], {f"{SERVICE}|v2": 100}),
            _route("bench-canary", 1, [], {f"{SERVICE}|v1": 90, f"{SERVICE}|v2": 10}),
        ],
    }


def _cluster(subset: str, dest: Destination, tls: dict[str, Any]) -> dict[str, Any]:
    version = subset or "v1"
    return {
        "service": SERVICE, "subset": subset, "port": SERVICE_PORT, "lb": "LEAST_REQUEST",
        "endpoints": [{
            "address": "127.0.0.1", "port": dest.port,
            "instance": f"{dest.workload}-0", "workload": dest.workload, "version": version,
            "labels": {"app": SERVICE, "version": version},
            "identity": identity(dest.workload) if dest.has_sidecar else None,
            "has_sidecar": dest.has_sidecar, "healthy": True,
        }],
        "connection_pool": None, "outlier_detection": None, "tls": tls,
    }


def _inbound(app_port: int) -> dict[str, Any]:
    return {
        "app": {"address": "127.0.0.1", "port": app_port},
        "service_port": SERVICE_PORT,
        "mtls": {"mode": "PERMISSIVE", "port_level": {}},
        "authz": {"deny": [], "allow": [], "audit": []},
        "rate_limit": None,
    }


def client_snapshot(dest: Destination, app_port: int, tls: dict[str, Any] | None = None,
                    trust: dict[str, Any] | None = None) -> dict[str, Any]:
    """The client-side sidecar: the realistic ``bench`` route table, clusters pointing at ``dest``.

    Its own inbound side (unused by the benchmark) forwards to ``app_port``.
    """
    tls = tls if tls is not None else TLS_DISABLE
    return with_version({
        "schema": 1, "revision": 1,
        "node": _node(CLIENT, CLIENT, "v1"),
        "outbound": {"virtual_hosts": [_virtual_host()]},
        "clusters": {f"{SERVICE}|{subset}": _cluster(subset, dest, tls) for subset in ("", "v1", "v2")},
        "inbound": _inbound(app_port),
        "trust": trust,
    })


def server_snapshot(app_port: int, workload: str = "bench-upstream",
                    trust: dict[str, Any] | None = None) -> dict[str, Any]:
    """The server-side sidecar in front of the upstream (its inbound forwards to ``app_port``)."""
    return with_version({
        "schema": 1, "revision": 1,
        "node": _node(workload, SERVICE, "v1"),
        "outbound": {"virtual_hosts": []},
        "clusters": {},
        "inbound": _inbound(app_port),
        "trust": trust,
    })
