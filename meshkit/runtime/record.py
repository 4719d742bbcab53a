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
    def proxy_id(self) -> str:
        """The sidecar's id at the control plane (``reviews-v1-0.default``)."""
        return f"{self.name}.{NAMESPACE}"

    def status(self) -> dict[str, Any]:
        healthy = bool(self.app and self.app.alive() and (self.sidecar is None or self.sidecar.alive()))
        return {
            "name": self.name,
            "service": self.spec.service,
            "version": self.spec.version,
            "pid": self.app.pid if self.app else None,
            "sidecar_pid": self.sidecar.pid if self.sidecar else None,
            "app_port": self.ports.app,
            "inbound_port": self.ports.inbound if self.spec.sidecar else None,
            "outbound_proxy": f"http://127.0.0.1:{self.ports.outbound}" if self.spec.sidecar else None,
            "admin_port": self.ports.admin if self.spec.sidecar else None,
            "healthy": healthy,
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

    def __post_init__(self) -> None:
        self.assign_slots()

    def specs(self) -> list[WorkloadSpec]:
        return catalog.resolve(self.apps, self.replicas)

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
            "processes": {k: v.to_json() for k, v in self.processes.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeshRecord:
        procs = {k: ProcessRecord.from_json(v) for k, v in data.get("processes", {}).items()}
        slots = {str(k): int(v) for k, v in data.get("slots", {}).items()}
        credentials = {str(k): str(v) for k, v in data.get("credentials", {}).items()}
        return cls(data["base_port"], list(data["apps"]), dict(data.get("replicas", {})), procs,
                   str(data.get("cert_ttl", DEFAULT_CERT_TTL)), bool(data.get("ready", True)), slots,
                   credentials)
