"""The local mesh's record (``mesh.json``) and the instances it describes.

`MeshRecord` says which app sets run with which replica counts, every process started
(pids with their start times), and which *port slot* each instance holds. Slots make ports
stable for the life of an instance: deploying or scaling never moves a running instance to
other ports, a new instance takes the lowest free slot and a removed one frees its slot.
Records written before slots existed get them from the old rule (instances in catalog order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshkit.runtime import catalog
from meshkit.runtime.catalog import WorkloadSpec
from meshkit.runtime.ports import InstancePorts, PortPlan
from meshkit.runtime.processes import ProcessRecord

DEFAULT_CERT_TTL = "24h"
NAMESPACE = "default"


@dataclass
class Instance:
    """One workload instance: the app process and its sidecar."""

    name: str  # "reviews-v1-0"
    spec: WorkloadSpec
    ports: InstancePorts
    app: ProcessRecord | None = None
    sidecar: ProcessRecord | None = None

    @property
    def sidecar_name(self) -> str:
        """The sidecar's process name in the record (``reviews-v1-0.sidecar``)."""
        return f"{self.name}.sidecar"

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    @property
    def pod(self) -> str:
        """The pod-like name in its namespace (``httpbin-0`` for instance ``httpbin-0.foo``)."""
        return self.name.partition(".")[0]

    @property
    def proxy_id(self) -> str:
        """The sidecar's id at the control plane (``reviews-v1-0.default``, ``httpbin-0.foo``)."""
        return f"{self.pod}.{self.namespace}"

    def status(self) -> dict[str, Any]:
        healthy = bool(self.app and self.app.alive() and (self.sidecar is None or self.sidecar.alive()))
        return {
            "name": self.name,
            "namespace": self.namespace,
            "service": self.spec.service,
            "version": self.spec.version,
            "pid": self.app.pid if self.app else None,
            "sidecar_pid": self.sidecar.pid if self.sidecar else None,
            "app_port": self.ports.app,
            # the port the app's container declares (nginx's 443): the pod's own 127.0.0.1:<port>
            "container_port": self.spec.listen_port or self.spec.service_port,
            "inbound_port": self.ports.inbound if self.spec.sidecar else None,
            "outbound_proxy": f"http://127.0.0.1:{self.ports.outbound}" if self.spec.sidecar else None,
            "admin_port": self.ports.admin if self.spec.sidecar else None,
            "healthy": healthy,
            # its pod's traffic.sidecar.istio.io/include/excludeOutboundIPRanges annotations
            "ip_ranges": dict(self.spec.ip_ranges),
        }


@dataclass
class MeshRecord:
    """What ``mesh.json`` holds."""

    base_port: int
    apps: list[str]
    replicas: dict[str, int]
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    cert_ttl: str = DEFAULT_CERT_TTL
    ready: bool = False  # set once `up` saw the whole mesh ready; a killed `up` leaves it False
    slots: dict[str, int] = field(default_factory=dict)  # instance name -> port block index
    # proxy process name -> SHA-256 (hex) of the CA token it was started with, so the token of a
    # removed or replaced sidecar can be revoked alone (replicas of one identity may share one)
    credentials: dict[str, str] = field(default_factory=dict)
    # the workloads of Deployment manifests in the control plane's store (`meshkit.runtime.manifests`)
    manifests: list[WorkloadSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.assign_slots()

    def catalog_sets(self) -> list[str]:
        """The app sets run from the catalog (the manifest-backed ones run from their Deployments)."""
        return [a for a in self.apps if a not in catalog.MANIFEST_SETS]

    def specs(self) -> list[WorkloadSpec]:
        sets = self.catalog_sets()
        known = {spec.workload for name in sets for spec in catalog.APP_SETS.get(name, ())}
        listed = catalog.resolve(sets, {w: n for w, n in self.replicas.items() if w in known})
        taken = {spec.workload for spec in listed}
        manifests = sorted((s for s in self.manifests if s.workload not in taken), key=_listing_order)
        return manifests + listed

    def instance_names(self) -> list[str]:
        return [name for spec in self.specs() for name in spec.instances()]

    def assign_slots(self) -> None:
        """Give every instance of the record a slot (the lowest free one), forget removed instances'."""
        names = self.instance_names()
        wanted = set(names)
        self.slots = {name: slot for name, slot in self.slots.items() if name in wanted}
        taken = set(self.slots.values())
        free = 0
        for name in names:
            if name in self.slots:
                continue
            while free in taken:
                free += 1
            self.slots[name] = free
            taken.add(free)

    def instances(self) -> list[Instance]:
        """Every instance, in catalog order, with its ports and its recorded processes."""
        plan = PortPlan(self.base_port)
        found = []
        for spec in self.specs():
            for name in spec.instances():
                found.append(Instance(name, spec, plan.instance(self.slots[name]),
                                      self.processes.get(name), self.processes.get(f"{name}.sidecar")))
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "control": f"http://127.0.0.1:{PortPlan(self.base_port).control}",  # read by the CLI
            "base_port": self.base_port,
            "apps": self.apps,
            "replicas": self.replicas,
            "cert_ttl": self.cert_ttl,
            "ready": self.ready,
            "slots": self.slots,
            "credentials": self.credentials,
            "manifests": [spec.to_json() for spec in self.manifests],
            "processes": {k: v.to_json() for k, v in self.processes.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeshRecord:
        procs = {k: ProcessRecord.from_json(v) for k, v in data.get("processes", {}).items()}
        slots = {str(k): int(v) for k, v in data.get("slots", {}).items()}
        credentials = {str(k): str(v) for k, v in data.get("credentials", {}).items()}
        apps, replicas = list(data["apps"]), dict(data.get("replicas", {}))
        if "manifests" in data:
            manifests = [WorkloadSpec.from_json(spec) for spec in data["manifests"]]
        else:  # a record from before manifests: its Bookinfo ran from the catalog, in catalog order
            manifests = legacy_manifests(apps, replicas)
            replicas = {w: n for w, n in replicas.items() if w not in {s.workload for s in manifests}}
        return cls(data["base_port"], apps, replicas, procs, str(data.get("cert_ttl", DEFAULT_CERT_TTL)),
                   bool(data.get("ready", True)), slots, credentials, manifests)


_CATALOG_ORDER = {spec.workload: index for index, spec in enumerate(s for set_ in catalog.APP_SETS.values()
                                                                   for s in set_)}


def _listing_order(spec: WorkloadSpec) -> tuple[int, str]:
    """Manifest workloads in the catalog's order where it names them (productpage first, as `up` always
    listed Bookinfo), then by name."""
    return (_CATALOG_ORDER.get(spec.workload, len(_CATALOG_ORDER)), spec.workload)


def legacy_manifests(apps: list[str], replicas: dict[str, int]) -> list[WorkloadSpec]:
    """The catalog's specs of the manifest-backed app sets among ``apps`` (as `up` ran them before)."""
    sets = [a for a in apps if a in catalog.MANIFEST_SETS]
    names = {s.workload for a in sets for s in catalog.APP_SETS[a]}
    return catalog.resolve(sets, {w: n for w, n in replicas.items() if w in names})
