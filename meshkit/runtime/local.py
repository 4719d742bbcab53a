"""The embedded local mesh: control plane, demo apps, one sidecar per instance and an ingress
gateway, all processes on 127.0.0.1, with no Docker, cluster or root.

`LocalMesh.up()` starts them in this order, as Istio would come up in a cluster:

1. the control plane (config store, registry, push, CA) on the plan's control port, after
   one CA bootstrap token per workload identity has been written to its token file
   (``control/ca/tokens.json``, 0600, SHA-256 digests only; the tokens of a previous run are
   revoked). Each sidecar gets its token in ``MESHKIT_CA_TOKEN``, so it can get a
   certificate for its own SPIFFE identity only. No API mints tokens: only a process that can
   write the control plane's state dir (the user who runs the mesh) can issue one;
2. the services and endpoints of the chosen app sets are registered — each endpoint is the
   instance's *inbound sidecar port*, so every request crosses two sidecars, as in Istio;
3. the app set's baseline config (Istio's destination-rule-all and the ingress route);
4. every app and every sidecar at once, plus the ingress gateway (a sidecar with no app);
5. it returns only when every app answers, every proxy has ACKed the latest snapshot and
   every sidecar reports ready (``/healthz/ready``: it has its workload certificate).

Everything it started is written to ``mesh.json`` in the state dir, so `down()` stops it
all even after the CLI that started it crashed.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from meshkit.control.ca import TOKENS_FILE, BootstrapTokens, CaError, parse_ttl, spiffe_identity
from meshkit.control.client import ApiError, ControlClient, ControlUnreachable
from meshkit.runtime import catalog
from meshkit.runtime.catalog import WorkloadSpec
from meshkit.runtime.ports import DEFAULT_BASE, PortPlan, busy_ports
from meshkit.runtime.processes import ProcessRecord, owned_by, python_argv, rss_bytes, spawn, stop
from meshkit.runtime.state import StateDir

NAMESPACE = "default"
INGRESS_ID = "istio-ingressgateway-0"
INGRESS_NAMESPACE = "istio-system"
INGRESS_SERVICE_ACCOUNT = "istio-ingressgateway-service-account"  # as Istio's gateway
TOKEN_ENV = "MESHKIT_CA_TOKEN"
DEFAULT_CERT_TTL = "24h"
READY_TIMEOUT = 60.0

Progress = Callable[[str, int, int], None]  # (what is happening, done, total)


class MeshError(RuntimeError):
    """`meshkit up` could not bring the mesh up; the text says what and where to look."""


@dataclass
class Instance:
    """One running workload instance: the app process and its sidecar."""

    name: str  # "reviews-v1-0"
    spec: WorkloadSpec
    ports: Any  # ports.InstancePorts
    app: ProcessRecord | None = None
    sidecar: ProcessRecord | None = None

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

    def to_json(self) -> dict[str, Any]:
        return {
            "control": f"http://127.0.0.1:{PortPlan(self.base_port).control}",  # read by the CLI
            "base_port": self.base_port,
            "apps": self.apps,
            "replicas": self.replicas,
            "cert_ttl": self.cert_ttl,
            "ready": self.ready,
            "processes": {k: v.to_json() for k, v in self.processes.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeshRecord:
        procs = {k: ProcessRecord.from_json(v) for k, v in data.get("processes", {}).items()}
        return cls(data["base_port"], list(data["apps"]), dict(data.get("replicas", {})), procs,
                   str(data.get("cert_ttl", DEFAULT_CERT_TTL)), bool(data.get("ready", True)))


def _quiet(_what: str, _done: int, _total: int) -> None:
    return None


def _default_base() -> int:
    return int(os.environ.get("MESHKIT_PORT_BASE", DEFAULT_BASE))


class LocalMesh:
    """Start, inspect and stop the local mesh recorded in one state dir."""

    def __init__(self, state: StateDir | None = None) -> None:
        self.state = state or StateDir.open()

    # -- reading the record -----------------------------------------------------------------

    def record(self) -> MeshRecord | None:
        data = self.state.read_mesh()
        return MeshRecord.from_json(data) if data else None

    def running(self) -> bool:
        """The whole mesh is up: its `up` finished and every process it started is alive."""
        rec = self.record()
        return (rec is not None and rec.ready and bool(rec.processes)
                and all(p.alive() for p in rec.processes.values()))

    def instances(self, rec: MeshRecord | None = None) -> list[Instance]:
        rec = rec or self.record()
        if rec is None:
            return []
        plan = PortPlan(rec.base_port)
        specs = catalog.resolve(rec.apps, rec.replicas)
        found = []
        index = 0
        for spec in specs:
            for name in spec.instances():
                inst = Instance(name, spec, plan.instance(index))
                inst.app = rec.processes.get(name)
                inst.sidecar = rec.processes.get(f"{name}.sidecar")
                found.append(inst)
                index += 1
        return found

    def control_url(self, rec: MeshRecord | None = None) -> str | None:
        rec = rec or self.record()
        return f"http://127.0.0.1:{PortPlan(rec.base_port).control}" if rec else None

    def status(self) -> dict[str, Any]:
        """The documented `meshkit status -o json` shape (keys fixed for scripts and tests)."""
        rec = self.record()
        if rec is None:
            return {"control": None, "ingress": None, "workloads": []}
        plan = PortPlan(rec.base_port)
        return {
            "control": f"http://127.0.0.1:{plan.control}",
            "ingress": f"http://127.0.0.1:{plan.ingress}",
            "workloads": [inst.status() for inst in self.instances(rec)],
        }

    def memory(self) -> dict[str, int]:
        """RSS in bytes of every process of the mesh, by process name."""
        rec = self.record()
        return {name: rss_bytes(p.pid) for name, p in (rec.processes if rec else {}).items() if p.alive()}

    # -- up ---------------------------------------------------------------------------------

    def up(
        self,
        apps: list[str] | None = None,
        replicas: dict[str, int] | None = None,
        *,
        base_port: int | None = None,
        progress: Progress = _quiet,
        timeout: float = READY_TIMEOUT,
        cert_ttl: str = DEFAULT_CERT_TTL,
    ) -> dict[str, Any]:
        """Bring the mesh up and return `status()`. Running it twice is harmless.

        ``apps`` defaults to Bookinfo; when a mesh already runs, asking for other ``apps`` or
        ``replicas`` than it has is a `MeshError` (stop it first), asking for nothing accepts it.
        ``cert_ttl`` is the workload certificates' lifetime (``30s``, ``24h``); sidecars rotate
        at half of it.
        """
        asked = apps is not None or bool(replicas)
        apps = apps or ["bookinfo"]
        replicas = replicas or {}
        specs = catalog.resolve(apps, replicas)  # validates names before anything starts
        try:
            parse_ttl(cert_ttl)
        except CaError as error:
            raise ValueError(str(error)) from None
        existing = self.record()
        if existing is not None:
            if self.running():
                if asked and (sorted(existing.apps), existing.replicas) != (sorted(apps), replicas):
                    raise MeshError(
                        f"a mesh of {_describe(existing.apps, existing.replicas)} is already running in "
                        f"{self.state.root}; stop it with `meshkit down` to start {_describe(apps, replicas)}"
                    )
                progress("mesh already running", 1, 1)
                return self.status()
            # Partly running: an instance died, or the `up` that started it was killed half-way.
            progress("cleaning up a mesh that is only partly running", 0, 1)
            self.down()
        rec = MeshRecord(base_port or _default_base(), apps, replicas, cert_ttl=cert_ttl)
        plan = PortPlan(rec.base_port)
        total_instances = sum(s.replicas for s in specs)
        busy = busy_ports(plan.all_ports(total_instances))
        if busy:
            raise MeshError(
                f"ports {', '.join(map(str, busy[:8]))} on 127.0.0.1 are in use; stop what uses them or "
                f"choose another base with MESHKIT_PORT_BASE (now {rec.base_port})"
            )
        self.state.write_mesh(rec.to_json())  # from here on, `down` can clean up whatever we start
        try:
            self._start(rec, plan, progress, timeout)
        except BaseException:
            self.down()
            raise
        rec.ready = True
        self.state.write_mesh(rec.to_json())
        return self.status()

    def _start(self, rec: MeshRecord, plan: PortPlan, progress: Progress, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        instances = self.instances(rec)
        steps = 4
        progress("starting the control plane", 0, steps)
        control_url = f"http://127.0.0.1:{plan.control}"
        tokens = self._issue_tokens(instances)
        self._spawn(rec, "control", python_argv(
            "meshkit.cli", "control", "--host", "127.0.0.1", "--port", str(plan.control),
            "--state-dir", str(self.state.control_dir), "--cert-ttl", rec.cert_ttl,
        ))
        client = ControlClient(control_url, timeout=5.0)
        self._wait(lambda: _answers(client), deadline, "the control plane", rec, "control")

        progress("registering services and endpoints", 1, steps)
        self._register(client, instances)
        for app_set in rec.apps:
            baseline = resources.files("meshkit.runtime").joinpath(f"defaults/{app_set}.yaml")
            if baseline.is_file():
                docs = [d for d in yaml.safe_load_all(baseline.read_text()) if d]
                client.apply(docs)

        progress(f"starting {len(instances)} workloads with their sidecars and the ingress gateway", 2, steps)
        for inst in instances:
            self._start_instance(rec, inst, control_url, tokens)
        self._spawn(rec, "ingressgateway", python_argv(
            "meshkit.proxy", "--control", control_url, "--id", f"{INGRESS_ID}.{INGRESS_NAMESPACE}",
            "--kind", "gateway", "--outbound-port", str(plan.ingress), "--inbound-port", "0",
            "--admin-port", str(plan.ingress_admin),
            "--access-log", str(self.state.log("ingressgateway.access")),
        ), env=_sidecar_env(tokens[_ingress_identity()]))

        self._scrape(client, instances, plan)

        progress("waiting for every app to answer and every proxy to ACK", 3, steps)
        for inst in instances:
            self._wait(lambda i=inst: _http_ok(f"http://127.0.0.1:{i.ports.app}/healthz"), deadline,
                       f"app {inst.name}", rec, inst.name)
        proxy_ids = [f"{i.name}.{NAMESPACE}" for i in instances if i.spec.sidecar]
        proxy_ids.append(f"{INGRESS_ID}.{INGRESS_NAMESPACE}")
        try:
            self._wait(lambda: _all_synced(client, proxy_ids), deadline, "every sidecar to ACK its snapshot",
                       rec, None)
        except MeshError as error:
            raise MeshError(f"{error}; not synced: {_unsynced(client, proxy_ids)}") from None
        admins = {f"{i.name}.sidecar": i.ports.admin for i in instances if i.spec.sidecar}
        admins["ingressgateway"] = plan.ingress_admin
        for name, port in admins.items():
            self._wait(lambda p=port: _http_ok(f"http://127.0.0.1:{p}/healthz/ready"), deadline,
                       f"{name} to be ready (snapshot and workload certificate)", rec, name)
        progress("mesh ready", steps, steps)

    def _register(self, client: ControlClient, instances: list[Instance]) -> None:
        meshed = [i for i in instances if i.spec.sidecar]  # out-of-mesh clients serve nothing
        services = {(i.spec.service, i.spec.service_port) for i in meshed}
        for name, port in sorted(services):
            client.request("POST", "registry/services",
                           json_body={"name": name, "namespace": NAMESPACE, "port": port})
        for inst in meshed:
            client.request("POST", "registry/endpoints", json_body={
                "instance": inst.name, "workload": inst.spec.workload, "service": inst.spec.service,
                "namespace": NAMESPACE, "address": "127.0.0.1", "port": inst.ports.inbound,
                "labels": inst.spec.labels, "service_account": inst.spec.service_account,
                "has_sidecar": True, "healthy": True, "app_port": inst.ports.app,
            })

    @staticmethod
    def _scrape(client: ControlClient, instances: list[Instance], plan: PortPlan) -> None:
        """Point telemetry at every sidecar's metrics, as a Prometheus scrape config would."""
        targets = {f"{i.name}.{NAMESPACE}": i.ports.admin for i in instances if i.spec.sidecar}
        targets[f"{INGRESS_ID}.{INGRESS_NAMESPACE}"] = plan.ingress_admin
        for name, port in targets.items():
            client.request("PUT", f"telemetry/targets/{name}",
                           json_body={"url": f"http://127.0.0.1:{port}/stats/prometheus"})

    def _issue_tokens(self, instances: list[Instance]) -> dict[str, str]:
        """One CA bootstrap token per workload identity, written to the CA's token file."""
        identities = {_identity(i.spec) for i in instances if i.spec.sidecar}
        identities.add(_ingress_identity())
        store = BootstrapTokens.open(self.state.control_dir / "ca" / TOKENS_FILE)
        tokens = {}
        for identity in sorted(identities):
            store.revoke(identity)  # the tokens of an earlier run stop working
            tokens[identity] = store.issue_token(identity)
        return tokens

    def _start_instance(self, rec: MeshRecord, inst: Instance, control_url: str,
                        tokens: dict[str, str]) -> None:
        spec, ports = inst.spec, inst.ports
        app_args = ["--port", str(ports.app), "--instance", inst.name, "--version", spec.version,
                    "--service-port", str(spec.service_port)]
        self._spawn(rec, inst.name, python_argv("meshkit.apps", spec.app, *app_args), env=_app_env(inst))
        if not spec.sidecar:
            return
        self._spawn(rec, f"{inst.name}.sidecar", python_argv(
            "meshkit.proxy", "--control", control_url, "--id", f"{inst.name}.{NAMESPACE}",
            "--outbound-port", str(ports.outbound), "--inbound-port", str(ports.inbound),
            "--admin-port", str(ports.admin), "--access-log", str(self.state.log(f"{inst.name}.access")),
        ), env=_sidecar_env(tokens[_identity(spec)]))

    def _spawn(self, rec: MeshRecord, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        rec.processes[name] = spawn(name, argv, log=self.state.log(name), env=env, owner=self._owner)
        self.state.write_mesh(rec.to_json())

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str, rec: MeshRecord,
              process: str | None) -> None:
        while time.monotonic() < deadline:
            if ready():
                return
            proc = rec.processes.get(process) if process else None
            if proc is not None and not proc.alive():
                raise MeshError(f"{what} exited during start-up; see {proc.log}:\n{_tail(Path(proc.log))}")
            time.sleep(0.05)
        hint = f"; see {rec.processes[process].log}" if process and process in rec.processes else ""
        raise MeshError(f"timed out waiting for {what}{hint}")

    # -- down and single instances ------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop everything the record names, then any unrecorded process this state dir started
        (a CLI killed between starting a process and recording it); returns the names that had to
        be SIGKILLed."""
        rec = self.record()
        killed: list[str] = []
        if rec is not None:
            # Sidecars and apps first, the control plane last (sidecars then never see it vanish first).
            killed = stop(sorted(rec.processes.values(), key=lambda p: p.name == "control"))
        killed += stop(owned_by(self._owner))
        self.state.clear_mesh()
        return killed

    @property
    def _owner(self) -> str:
        """The tag every process of this mesh carries in its environment (processes.OWNER_ENV)."""
        return str(self.state.root.resolve())

    def kill(self, instance: str) -> None:
        """Kill one instance's app abruptly (SIGKILL), like a crashing pod; its sidecar stays."""
        proc = self._process(instance)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, 9)

    def restart(self, instance: str, timeout: float = 20.0) -> None:
        """Stop (if needed) and start one instance's app again on the same port."""
        rec = self.record()
        if rec is None:
            raise MeshError("no mesh is running; start one with `meshkit up`")
        inst = next((i for i in self.instances(rec) if i.name == instance), None)
        if inst is None:
            raise MeshError(f"no instance {instance!r}; see `meshkit status`")
        stop([p for p in (inst.app,) if p is not None])
        assert inst.app is not None
        self._spawn(rec, instance, list(inst.app.argv), env=_app_env(inst))
        self._wait(lambda: _http_ok(f"http://127.0.0.1:{inst.ports.app}/healthz"),
                   time.monotonic() + timeout, f"app {instance}", rec, instance)

    def _process(self, name: str) -> ProcessRecord:
        rec = self.record()
        if rec is None:
            raise MeshError("no mesh is running; start one with `meshkit up`")
        if name not in rec.processes:
            known = ", ".join(sorted(n for n in rec.processes if "." not in n and n != "control"))
            raise MeshError(f"no instance {name!r}; known instances: {known}")
        return rec.processes[name]

    def log_path(self, name: str, sidecar: bool = False, access: bool = False) -> Path:
        """The log of an instance's app, of its sidecar, or its sidecar's JSON access log."""
        app = self._process(name)  # a clear error for an unknown instance
        if name == "ingressgateway":  # a proxy with no app: its own log is the sidecar's
            return self.state.log(f"{name}.access") if access else Path(app.log)
        if not (sidecar or access):
            return Path(app.log)
        rec = self.record()
        if rec is None or f"{name}.sidecar" not in rec.processes:
            raise MeshError(f"{name} has no sidecar (it runs outside the mesh), so no sidecar or access log")
        if access:
            return self.state.log(f"{name}.access")
        return Path(self._process(f"{name}.sidecar").log)


def _identity(spec: WorkloadSpec) -> str:
    return spiffe_identity(NAMESPACE, spec.service_account)


def _ingress_identity() -> str:
    return spiffe_identity(INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT)


def _sidecar_env(token: str) -> dict[str, str]:
    """A sidecar's environment: ours plus its CA bootstrap token (never on the command line)."""
    return {**os.environ, TOKEN_ENV: token}


def _describe(apps: list[str], replicas: dict[str, int]) -> str:
    """``bookinfo + httpbin (reviews-v1=2)``, as `meshkit up` options read."""
    extra = ", ".join(f"{name}={count}" for name, count in sorted(replicas.items()))
    return " + ".join(apps) + (f" ({extra})" if extra else "")


def _app_env(inst: Instance) -> dict[str, str]:
    """The app's environment: its sidecar as HTTP proxy (none for an out-of-mesh client)."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    if inst.spec.sidecar:
        env["HTTP_PROXY"] = f"http://127.0.0.1:{inst.ports.outbound}"
        env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def _answers(client: ControlClient) -> bool:
    try:
        client.healthz()
    except (ControlUnreachable, ApiError):
        return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _all_synced(client: ControlClient, proxy_ids: list[str]) -> bool:
    try:
        rows = client.proxy_status()
    except (ControlUnreachable, ApiError):
        return False
    proxies = rows.get("proxies", rows) if isinstance(rows, dict) else rows
    synced = {row.get("id") for row in proxies if row.get("status") == "SYNCED"}
    return all(pid in synced for pid in proxy_ids)


def _unsynced(client: ControlClient, proxy_ids: list[str]) -> str:
    """Which proxies have not ACKed, and why (NACK reason, compile error, never connected)."""
    try:
        rows = {row.get("id"): row for row in client.proxy_status().get("proxies", [])}
    except (ControlUnreachable, ApiError) as error:
        return f"(the control plane did not answer: {error})"
    missing = []
    for pid in proxy_ids:
        row = rows.get(pid)
        if row is None:
            missing.append(f"{pid} never connected")
        elif row.get("status") != "SYNCED":
            why = row.get("compile_error") or row.get("reason") or ""
            missing.append(f"{pid} {row.get('status')}" + (f" ({why})" if why else ""))
    return "; ".join(missing) or "(all synced now)"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
