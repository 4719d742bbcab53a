"""What an app set consists of: the workloads `meshkit up --app NAME` starts, as data.

Names, versions, service accounts and service ports follow Istio's samples (Bookinfo on
9080 with the ``bookinfo-*`` service accounts, httpbin on 8000), so Istio's YAML applies
unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True)
class WorkloadSpec:
    """One Deployment-like workload: ``replicas`` instances of ``app`` at ``version``."""

    app: str  # the demo app to run (meshkit.apps): "productpage", "reviews", ...
    version: str  # "v1"
    service: str  # the Service it backs
    service_port: int  # the port in URLs: http://reviews:9080/
    service_account: str
    sidecar: bool = True
    replicas: int = 1

    @property
    def workload(self) -> str:
        """Istio's workload name (the Deployment): ``reviews-v1``."""
        return f"{self.service}-{self.version}"

    def instances(self) -> list[str]:
        """Pod-like instance names: ``reviews-v1-0``, ``reviews-v1-1``, ..."""
        return [f"{self.workload}-{i}" for i in range(self.replicas)]

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.service, "version": self.version}


BOOKINFO: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("productpage", "v1", "productpage", 9080, "bookinfo-productpage"),
    WorkloadSpec("details", "v1", "details", 9080, "bookinfo-details"),
    WorkloadSpec("reviews", "v1", "reviews", 9080, "bookinfo-reviews"),
    WorkloadSpec("reviews", "v2", "reviews", 9080, "bookinfo-reviews"),
    WorkloadSpec("reviews", "v3", "reviews", 9080, "bookinfo-reviews"),
    WorkloadSpec("ratings", "v1", "ratings", 9080, "bookinfo-ratings"),
)

# Istio's mirroring task runs two versions of httpbin and mirrors v1's traffic to v2.
HTTPBIN: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("httpbin", "v1", "httpbin", 8000, "httpbin"),
    WorkloadSpec("httpbin", "v2", "httpbin", 8000, "httpbin"),
)

# Clients for the security lessons, as in Istio's samples: `sleep` in the mesh (service port 80)
# and `legacy`, a client with no sidecar whose plaintext a STRICT PeerAuthentication refuses.
CLIENTS: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("sleep", "v1", "sleep", 80, "sleep"),
    WorkloadSpec("legacy", "v1", "legacy", 80, "legacy", sidecar=False),
)

APP_SETS: dict[str, tuple[WorkloadSpec, ...]] = {"bookinfo": BOOKINFO, "httpbin": HTTPBIN, "clients": CLIENTS}


def resolve(app_sets: list[str], replicas: dict[str, int]) -> list[WorkloadSpec]:
    """The workloads of the named app sets, with replica overrides keyed by workload name.

    Raises ValueError naming the unknown app set or workload.
    """
    specs: list[WorkloadSpec] = []
    for name in app_sets:
        if name not in APP_SETS:
            raise ValueError(f"unknown app {name!r}; choose from {', '.join(sorted(APP_SETS))}")
        specs.extend(APP_SETS[name])
    known = {s.workload for s in specs}
    for workload, count in replicas.items():
        if workload not in known:
            listing = ", ".join(sorted(known))
            raise ValueError(f"--replicas {workload}={count}: no such workload (known: {listing})")
        if not 0 <= count <= 10:
            raise ValueError(f"--replicas {workload}={count}: replicas must be between 0 and 10")
    return [dataclasses.replace(s, replicas=replicas.get(s.workload, s.replicas)) for s in specs]


def workload_of(name: str) -> str:
    """The workload an instance belongs to (``reviews-v1-0`` -> ``reviews-v1``); any other name stays."""
    head, _, tail = name.rpartition("-")
    return head if head and tail.isdigit() else name


def refers_to(name: str, row: Mapping[str, Any], *, by_service: bool = True) -> bool:
    """Does ``name`` name this `meshkit status` workload row: its instance (``sleep-v1-0``), its
    workload (``sleep-v1``) or, with ``by_service``, its service (``sleep``)?"""
    instance = str(row["name"])
    return name in (instance, workload_of(instance)) or (by_service and name == row.get("service"))


def default_config(app_set: str) -> list[dict[str, Any]]:
    """The Istio config `up` and `deploy` apply with ``app_set`` (``defaults/<set>.yaml``: Bookinfo's
    destination-rule-all and ingress route, httpbin's subsets); none for the others (clients)."""
    baseline = resources.files("meshkit.runtime").joinpath(f"defaults/{app_set}.yaml")
    if not baseline.is_file():
        return []
    return [doc for doc in yaml.safe_load_all(baseline.read_text()) if doc]
