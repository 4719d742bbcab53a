"""A real local mesh for end-to-end tests: start it on free ports, apply rules and undo them, stop it.

`start_mesh` is a context manager around `LocalMesh.up`/`down` with an isolated state dir;
`RunningMesh` adds what the tests need to drive and observe it: the status, a control-plane
client, `rules(...)` (apply Istio YAML, wait until every proxy ACKed, restore on exit) and the
pids of everything the mesh runs (to prove that `down` leaves nothing behind).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshkit.control.client import ApiError, ControlClient
from meshkit.runtime import catalog
from meshkit.runtime.local import DEFAULT_CERT_TTL, LocalMesh, MeshError
from meshkit.runtime.ports import free_bases
from meshkit.runtime.state import StateDir
from tests.e2e import cli

SAMPLES = Path(__file__).resolve().parents[1] / "config" / "istio_samples"
RULES = Path(__file__).resolve().parent / "rules"
SYNC_SECONDS = 30.0

def sample(name: str) -> list[dict[str, Any]]:
    """The documents of one of Istio's sample files (tests/config/istio_samples), unchanged."""
    return [d for d in yaml.safe_load_all((SAMPLES / name).read_text()) if d]


def rule(name: str) -> list[dict[str, Any]]:
    """The documents of one of this suite's own rule files (tests/e2e/rules)."""
    return [d for d in yaml.safe_load_all((RULES / name).read_text()) if d]


def free_port_bases(instances: int) -> Iterator[int]:
    """Port bases (random order) whose whole plan for ``instances`` instances is free right now."""
    return free_bases(instances)


def ref(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return doc["kind"], meta["name"], meta.get("namespace", "default")


@dataclass
class RunningMesh:
    mesh: LocalMesh
    home: Path
    base: int

    @property
    def status(self) -> dict[str, Any]:
        return self.mesh.status()

    @property
    def ingress(self) -> str:
        return str(self.status["ingress"])

    @property
    def client(self) -> ControlClient:
        return ControlClient(str(self.status["control"]), timeout=30.0, token=self.mesh.admin_token() or "")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``meshkit ARGS`` as a real subprocess against this mesh (`cli.meshkit`)."""
        return cli.meshkit(self.home, self.base, *args)

    def ok(self, *args: str) -> str:
        """``meshkit ARGS``, which must exit 0: what it printed on stdout."""
        done = self.run(*args)
        assert done.returncode == 0, f"meshkit {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def workload(self, name: str) -> dict[str, Any]:
        """The `meshkit status` row of one instance (``reviews-v1-0``)."""
        rows = [w for w in self.status["workloads"] if w["name"] == name]
        assert rows, f"no instance {name} in {[w['name'] for w in self.status['workloads']]}"
        return rows[0]

    def pids(self) -> dict[str, int]:
        """Every process the mesh recorded (control plane, apps, sidecars, gateway), by name."""
        rec = self.mesh.record()
        return {name: p.pid for name, p in (rec.processes if rec else {}).items()}

    def wait_synced(self) -> None:
        answer = self.client.proxy_status(wait=SYNC_SECONDS)
        stale = [p["id"] for p in answer["proxies"] if p["connected"] and p["status"] != "SYNCED"]
        assert answer["synced"] and not stale, f"proxies not SYNCED after {SYNC_SECONDS}s: {stale}"

    @contextmanager
    def rules(self, *documents: dict[str, Any]) -> Iterator[None]:
        """Apply ``documents``, wait for every proxy's ACK; on exit put back what they replaced."""
        client = self.client
        previous: list[dict[str, Any]] = []
        for doc in documents:
            kind, name, namespace = ref(doc)
            try:
                found = client.get(kind, name, namespace)
            except ApiError as error:
                if error.status != 404:
                    raise
                continue
            previous += [item["resource"] for item in found["items"]]
        client.apply(list(documents))
        self.wait_synced()
        try:
            yield
        finally:
            client.delete_documents(list(documents))
            if previous:
                client.apply(previous)
            self.wait_synced()


@contextmanager
def start_mesh(home: Path, apps: list[str], replicas: dict[str, int] | None = None,
               *, attempts: int = 4, spare: int = 0,
               cert_ttl: str = DEFAULT_CERT_TTL) -> Iterator[RunningMesh]:
    """A mesh of ``apps`` with state in ``home``, on a free port base; always stopped on exit.

    ``spare`` more instance port blocks are free too, for instances a test deploys later;
    ``cert_ttl`` is the workload certificates' lifetime.
    """
    replicas = replicas or {}
    # `up` starts Bookinfo for an empty list, as `meshkit up` does: the plan must cover it
    instances = sum(s.replicas for s in catalog.resolve(apps or ["bookinfo"], replicas)) + spare
    mesh = LocalMesh(StateDir.open(home))
    last: Exception | None = None
    for base in list(free_port_bases(instances))[:attempts]:
        try:
            mesh.up(apps, replicas, base_port=base, timeout=60.0, cert_ttl=cert_ttl)
        except MeshError as error:
            if "in use" not in str(error):
                raise
            last = error  # another test run took a port between the check and the bind
            continue
        try:
            yield RunningMesh(mesh, home, base)
        finally:
            mesh.down()
        return
    raise AssertionError(f"could not start {apps} on any free port base: {last}")
