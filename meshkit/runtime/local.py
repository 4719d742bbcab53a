"""The embedded local mesh: control plane, demo apps, one sidecar per instance and an ingress
gateway, all processes on 127.0.0.1, with no Docker, cluster or root.

`LocalMesh.up()` starts them in this order, as Istio would come up in a cluster:

1. the control plane (config store, registry, push, CA) on the plan's control port, after
   one CA bootstrap token per workload identity has been written to its token file
   (``control/ca/tokens.json``, 0600, SHA-256 digests only; the tokens of a previous run are
   revoked). Each sidecar gets its token in a 0600 file (``--ca-token-file``), so it can get a
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

A running mesh can change as a cluster would (`meshkit.runtime.rollout`): `deploy()` adds app
sets and scales workloads (`scale()`), `restart()` brings back an instance whose app or sidecar
died. The pieces that start and wait for processes are `meshkit.runtime.launch`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from meshkit.config.meshconfig import mesh_config_map
from meshkit.control.auth import read_admin_token
from meshkit.control.ca import CaError, parse_ttl
from meshkit.control.client import ControlClient
from meshkit.runtime import catalog, egressgw, kube_gateways, manifests, rollout
from meshkit.runtime.launch import (
    INGRESS_ID,
    INGRESS_LABELS,
    INGRESS_NAMESPACE,
    INGRESS_SERVICE_ACCOUNT,
    TOKEN_ENV,
    Launcher,
    MeshError,
    Progress,
    identity,
    ingress_identity,
    ingress_service,
    quiet,
)
from meshkit.runtime.ports import (
    DEFAULT_BASE,
    PortPlan,
    busy_ports,
    check_port_plan,
    free_bases,
    name_holders,
)
from meshkit.runtime.processes import ProcessRecord, owned_by, python_argv, rss_bytes, stop
from meshkit.runtime.record import DEFAULT_CERT_TTL, NAMESPACE, Instance, MeshRecord
from meshkit.runtime.state import StateDir

__all__ = [
    "DEFAULT_CERT_TTL", "INGRESS_ID", "INGRESS_NAMESPACE", "INGRESS_SERVICE_ACCOUNT", "NAMESPACE",
    "READY_TIMEOUT", "TOKEN_ENV", "Instance", "LocalMesh", "MeshError", "MeshRecord", "Progress",
]

READY_TIMEOUT = 60.0


AUTO_BASE_HEADROOM = 10  # instances a chosen plan keeps free beyond the first `up` (deploy, scale)


def _chosen_base(instances: int, progress: Progress) -> int:
    """The port base of a new mesh: MESHKIT_PORT_BASE when set (kept even if busy: the caller asked
    for it), else the default plan, else (another learner's mesh holds the default, as on a shared
    JupyterHub) a free plan below the ephemeral range. The base is recorded in the state dir, so every
    later command and notebook of this MESHKIT_HOME finds the mesh."""
    asked = os.environ.get("MESHKIT_PORT_BASE")
    if asked:
        return int(asked)
    if not busy_ports(PortPlan(DEFAULT_BASE).all_ports(instances)):
        return DEFAULT_BASE
    base = next(free_bases(instances + AUTO_BASE_HEADROOM), None)
    if base is None:
        return DEFAULT_BASE  # nothing free: the busy-port error below names the ports
    progress(f"ports of the default plan ({DEFAULT_BASE}) are in use: using base {base}", 0, 1)
    return base


P = ParamSpec("P")
R = TypeVar("R")


def _exclusive(method: Callable[Concatenate[LocalMesh, P], R]) -> Callable[Concatenate[LocalMesh, P], R]:
    """Run a method that changes the mesh under the state dir's change lock (re-entrant per object)."""

    @functools.wraps(method)
    def locked(self: LocalMesh, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._changing():
            return method(self, *args, **kwargs)

    return locked


class LocalMesh:
    """Start, inspect, change and stop the local mesh recorded in one state dir."""

    def __init__(self, state: StateDir | None = None) -> None:
        self.state = state or StateDir.open()
        self._changes = 0  # depth of nested changes holding the state dir's lock (up calls deploy)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        if self._changes:
            self._changes += 1
            try:
                yield
            finally:
                self._changes -= 1
            return
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.state.changing())
            except TimeoutError as error:
                raise MeshError(str(error)) from None
            self._changes = 1
            try:
                yield
            finally:
                self._changes = 0

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
        return rec.instances() if rec is not None else []

    def control_url(self, rec: MeshRecord | None = None) -> str | None:
        rec = rec or self.record()
        return f"http://127.0.0.1:{PortPlan(rec.base_port).control}" if rec else None

    def admin_token(self) -> str | None:
        """The control plane's admin token (``<state>/control/admin-token``, 0600), if `up` made one."""
        return read_admin_token(self.state.control_dir)

    def client(self, timeout: float = 15.0) -> ControlClient:
        """An admin client of this mesh's control plane."""
        return ControlClient(self.control_url() or "http://127.0.0.1:0", timeout=timeout,
                             token=self.admin_token() or "")

    def status(self) -> dict[str, Any]:
        """The documented `meshkit status -o json` shape (keys fixed for scripts and tests)."""
        rec = self.record()
        if rec is None:
            return {"control": None, "ingress": None, "ingress_https": None, "ingress_tcp": None,
                    "workloads": []}
        plan = PortPlan(rec.base_port)
        return {
            "control": f"http://127.0.0.1:{plan.control}",
            "ingress": f"http://127.0.0.1:{plan.ingress}",
            "ingress_https": f"https://127.0.0.1:{plan.ingress_https}",
            "ingress_tcp": f"127.0.0.1:{plan.ingress_tcp}",
            "workloads": [inst.status() for inst in self.instances(rec)],
        }

    def ingress_service(self) -> dict[str, Any] | None:
        """The ``istio-ingressgateway`` Service of this mesh, with its local ports (None: no mesh)."""
        rec = self.record()
        return ingress_service(PortPlan(rec.base_port)) if rec is not None else None

    def memory(self) -> dict[str, int]:
        """RSS in bytes of every process of the mesh, by process name."""
        rec = self.record()
        return {name: rss_bytes(p.pid) for name, p in (rec.processes if rec else {}).items() if p.alive()}

    # -- up ---------------------------------------------------------------------------------

    @_exclusive
    def up(
        self,
        apps: list[str] | None = None,
        replicas: dict[str, int] | None = None,
        *,
        base_port: int | None = None,
        progress: Progress = quiet,
        timeout: float = READY_TIMEOUT,
        cert_ttl: str = DEFAULT_CERT_TTL,
        mesh_config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Bring the mesh up and return `status()`. Running it twice is harmless.

        ``apps`` defaults to Bookinfo. When a mesh already runs, ``up`` adds what is asked and
        missing, as `deploy` does: app sets not running yet, and ``replicas`` counts (never
        removing an app set); asking for nothing accepts the running mesh.
        ``cert_ttl`` is the workload certificates' lifetime (``30s``, ``24h``); sidecars rotate
        at half of it. ``mesh_config`` (Istio's meshConfig, from ``--set meshConfig...``) is applied as
        Istio's ``istio`` ConfigMap in ``istio-system``, as ``istioctl install --set`` writes it.
        """
        asked = apps is not None or bool(replicas)
        apps = apps or ["bookinfo"]
        replicas = replicas or {}
        catalog.resolve(apps, replicas)  # validates names before anything starts
        try:
            parse_ttl(cert_ttl)
        except CaError as error:
            raise ValueError(str(error)) from None
        existing = self.record()
        if existing is not None:
            # A dead control plane is restarted alone (its state is on disk; the sidecars keep their
            # last snapshot and reconnect), then dead instances, as a Deployment would; only an `up`
            # killed half-way means starting afresh.
            control = existing.processes.get("control")
            if existing.ready and control is not None and not control.alive():
                progress("restarting the control plane (the rest of the mesh keeps running)", 0, 1)
                self.restart_control(timeout=timeout)
                existing = self.record() or existing
            if self.running() or self._heal(existing, progress, timeout):
                if mesh_config is not None:
                    self.client().apply([mesh_config_map(mesh_config)])
                if asked:
                    return self.deploy(apps, replicas, progress=progress, timeout=timeout)
                progress("mesh already running", 1, 1)
                return self.status()
            progress("cleaning up a mesh that is only partly running", 0, 1)
            self.down()
        by_manifest = manifests.manifest_workloads(MeshRecord(0, apps, {}))
        rec = MeshRecord(base_port or 0, apps,
                         {w: n for w, n in replicas.items() if w not in by_manifest}, cert_ttl=cert_ttl)
        # Bookinfo is Istio's manifests: the instances are what their Deployments say (with --replicas)
        rec.manifests = manifests.default_specs(apps, {w: n for w, n in replicas.items() if w in by_manifest})
        rec.assign_slots()
        total_instances = len(rec.instances())
        rec.base_port = base_port or _chosen_base(total_instances, progress)
        plan = PortPlan(rec.base_port)
        problem = check_port_plan(plan.all_ports(total_instances), rec.base_port)
        if problem:
            raise MeshError(problem)
        self.state.write_mesh(rec.to_json())  # from here on, `down` can clean up whatever we start
        try:
            self._start(Launcher(self.state, rec), progress, timeout, mesh_config)
        except BaseException:
            self.down()
            raise
        rec.ready = True
        self.state.write_mesh(rec.to_json())
        return self.status()

    def _start(self, launcher: Launcher, progress: Progress, timeout: float,
               mesh_config: dict[str, Any] | None = None) -> None:
        deadline = time.monotonic() + timeout
        rec = launcher.rec
        instances = rec.instances()
        steps = 4
        progress("starting the control plane", 0, steps)
        identities = {identity(i.spec) for i in instances if i.spec.sidecar} | {ingress_identity()}
        tokens = launcher.issue_tokens(identities, revoke_earlier=True)  # an earlier run's stop working
        client = self._spawn_control(launcher, deadline)
        client.set_external({})  # a fresh mesh: no stand-ins until `external` runs (launcher.register)
        if mesh_config is not None:  # before any sidecar starts: its first snapshot has the policy
            client.apply([mesh_config_map(mesh_config)])

        progress("registering services and endpoints", 1, steps)
        launcher.apply_defaults(client, rec.apps, {s.workload: s.replicas for s in rec.manifests})
        instances = self._persisted_workloads(launcher, client, tokens)
        launcher.register(client, instances)

        progress(f"starting {len(instances)} workloads with their sidecars and the ingress gateway", 2, steps)
        for inst in instances:
            launcher.start_instance(inst, tokens)
        launcher.start_ingress(tokens[ingress_identity()])

        progress("waiting for every app to answer and every proxy to ACK", 3, steps)
        launcher.wait_ready(client, instances, deadline, ingress=True)
        # the stored Gateway API Gateways that have their own proxy run again too (`kube_gateways`)
        kube_gateways.reconcile(launcher, client, manifests.stored_resources(client), deadline=deadline)
        progress("mesh ready", steps, steps)

    @staticmethod
    def _persisted_workloads(launcher: Launcher, client: ControlClient,
                             tokens: dict[str, str]) -> list[Instance]:
        """The instances to start: the store persists across `down`/`up`, so the Deployments a learner
        applied before run again (as after a cluster restart), beside the app sets' own."""
        rec = launcher.rec
        stored = manifests.specs_of(manifests.stored_resources(client))
        if stored != rec.manifests:
            rec.manifests = stored
            rec.assign_slots()
            instances = rec.instances()
            ports = [p for i in instances
                     for p in (i.ports.admin, i.ports.outbound, i.ports.inbound, i.ports.app)]
            busy = busy_ports(ports)
            if busy:
                raise MeshError(f"ports {name_holders(busy)} on 127.0.0.1 are in use, needed by "
                                "the Deployments in the mesh's config; stop what uses them or choose another "
                                f"MESHKIT_PORT_BASE (now {rec.base_port})")
            launcher.save()
            missing = {identity(i.spec) for i in instances if i.spec.sidecar} - set(tokens)
            tokens.update(launcher.issue_tokens(missing, revoke_earlier=False))
        return rec.instances()

    @_exclusive
    def restart_control(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the control plane again on its port (`meshkit restart control`); nothing else is
        stopped. Its config, registry, CA and tokens are on disk; sidecars reconnect by themselves."""
        rec = self.record()
        if rec is None or not rec.ready:
            raise MeshError(f"restart control: no mesh is running in {self.state.root}; "
                            "start one with `meshkit up`")
        control = rec.processes.get("control")
        if control is not None and control.alive():
            stop([control])
        launcher = Launcher(self.state, rec)
        problem = check_port_plan([launcher.plan.control], rec.base_port, what="the control plane's port")
        if problem:
            raise MeshError(f"restart control: {problem}")
        self._spawn_control(launcher, time.monotonic() + timeout)

    def _spawn_control(self, launcher: Launcher, deadline: float) -> ControlClient:
        launcher.spawn("control", python_argv(
            "meshkit.cli", "control", "--host", "127.0.0.1", "--port", str(launcher.plan.control),
            "--state-dir", str(self.state.control_dir), "--cert-ttl", launcher.rec.cert_ttl,
        ))
        client = launcher.client(timeout=5.0)
        launcher.wait_control(client, deadline)
        return client

    def _heal(self, rec: MeshRecord, progress: Progress, timeout: float) -> bool:
        """Restart the dead instances of a mesh whose `up` finished and whose control plane runs."""
        control = rec.processes.get("control")
        if not rec.ready or control is None or not control.alive():
            return False
        dead = [name for name, proc in rec.processes.items() if not proc.alive()]
        proxies = [name for name in dead if kube_gateways.is_gateway_process(rec.processes[name])]
        instances = sorted({name.removesuffix(".sidecar") for name in dead if name not in proxies})
        progress(f"restarting {', '.join([*instances, *proxies])}", 0, 1)
        try:
            for name in instances:
                rollout.restart(self.state, rec, name, timeout=timeout)
            if proxies:  # a Gateway's own proxy: started again by the reconciler, on its ports
                self._gateway_proxies(rec, timeout)
        except MeshError:
            return False
        return self.running()

    def _gateway_proxies(self, rec: MeshRecord, timeout: float) -> list[str]:
        """Run the proxies of the stored Gateways that have their own (`kube_gateways`): dead ones again."""
        launcher = Launcher(self.state, rec)
        client = rollout.answering_client(launcher, "")
        return kube_gateways.reconcile(launcher, client, manifests.stored_resources(client),
                                       deadline=time.monotonic() + timeout)

    # -- changing a running mesh -------------------------------------------------------------------

    def _running_record(self, what: str) -> MeshRecord:
        rec = self.record()
        if rec is None or not rec.ready:
            raise MeshError(f"{what}: no mesh is running in {self.state.root}; start one with `meshkit up`")
        control = rec.processes.get("control")
        if control is None or not control.alive():
            raise MeshError(f"{what}: the mesh's control plane is not running; start it again with "
                            "`meshkit restart control` (the rest of the mesh keeps running)")
        return rec

    @_exclusive
    def deploy(self, apps: list[str] | None = None, replicas: dict[str, int] | None = None, *,
               progress: Progress = quiet, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Add app sets (``["clients"]``) and scale workloads (``{"reviews-v1": 2}``) in the running mesh.

        Like `kubectl apply` of a sample plus `kubectl scale`: new instances get sidecars, CA
        tokens, registration and their app set's default DestinationRules; removed ones are
        deregistered, then stopped. Returns `status()` once every proxy ACKed the current snapshot.
        """
        rec = self._running_record("deploy")
        sets = [a for a in apps or [] if a != egressgw.APP_SET]
        if sets or replicas:
            self._deploy(rec, sets, dict(replicas or {}), progress=progress, timeout=timeout)
        if egressgw.APP_SET in (apps or []):  # a gateway proxy, no app: `meshkit.runtime.egressgw`
            egressgw.deploy(self.state, self._running_record("deploy"), timeout=timeout)
        return self.status()

    def _deploy(self, rec: MeshRecord, apps: list[str], replicas: dict[str, int], *, progress: Progress,
                timeout: float) -> None:
        """Catalog app sets through `rollout`; manifest-backed ones (Bookinfo) and the replicas of any
        Deployment through the store and `manifests.reconcile`."""
        catalog.resolve([*rec.apps, *apps], {})  # unknown app set names, before anything changes
        new_manifest_sets = [a for a in dict.fromkeys(apps)
                             if a in catalog.MANIFEST_SETS and a not in rec.apps]
        by_manifest = manifests.manifest_workloads(rec, new_manifest_sets)
        rollout.deploy(self.state, rec, [a for a in apps if a not in catalog.MANIFEST_SETS],
                       {w: n for w, n in replicas.items() if w not in by_manifest}, progress=progress,
                       timeout=timeout)
        deployment_replicas = {w: n for w, n in replicas.items() if w in by_manifest}
        if new_manifest_sets or deployment_replicas:
            manifests.deploy(self.state, rec, new_manifest_sets, deployment_replicas, progress=progress,
                             timeout=timeout)

    @_exclusive
    def reconcile(self, *, progress: Progress = quiet, timeout: float = READY_TIMEOUT) -> list[str]:
        """Run what the Deployments in the control plane's store say (after `meshkit apply`/`delete`)."""
        rec = self._running_record("apply")
        return manifests.reconcile(self.state, rec, progress=progress, timeout=timeout)

    @_exclusive
    def scale(self, workload: str, replicas: int, *, progress: Progress = quiet,
              timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Run ``replicas`` (0-10) instances of ``workload`` (``reviews-v1``), like `kubectl scale`."""
        rec = self._running_record(f"scale {workload}")
        known = {spec.qualified for spec in rec.specs()}
        if workload not in known:
            raise MeshError(f"scale {workload}: no such workload in this mesh "
                            f"(running: {', '.join(sorted(known))})")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 10:
            raise MeshError(f"scale {workload}: replicas must be a whole number from 0 to 10, "
                            f"got {replicas!r}")
        self._deploy(rec, [], {workload: replicas}, progress=progress, timeout=timeout)
        return self.status()

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
        killed += stop(owned_by(self.state.owner))
        for token_file in (self.state.run_dir / "tokens").glob("*.token"):  # the sidecars' CA tokens
            token_file.unlink(missing_ok=True)
        self.state.clear_mesh()
        return killed

    def kill(self, instance: str) -> None:
        """Kill one instance's app abruptly (SIGKILL), like a crashing pod; its sidecar stays."""
        proc = self._process(instance)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, 9)

    @_exclusive
    def restart(self, instance: str, timeout: float = 30.0) -> None:
        """Start one instance's app again on the same ports, and its sidecar too if that died.

        ``ingressgateway`` restarts the ingress gateway. Returns once the instance answers and
        its sidecar has its snapshot and (new) certificate.
        """
        if instance == "control":
            self.restart_control(timeout=max(timeout, READY_TIMEOUT))
            return
        rec = self.record()
        if rec is None:
            raise MeshError("no mesh is running; start one with `meshkit up`")
        proc = rec.processes.get(instance)
        if proc is not None and kube_gateways.is_gateway_process(proc):  # a Gateway's own proxy
            stop([proc])
            self._gateway_proxies(rec, timeout)
            return
        rollout.restart(self.state, rec, instance, timeout=timeout)

    def _process(self, name: str) -> ProcessRecord:
        rec = self.record()
        if rec is None:
            raise MeshError("no mesh is running; start one with `meshkit up`")
        if name not in rec.processes:
            known = ", ".join(sorted(n for n in rec.processes if "." not in n and n != "control"))
            raise MeshError(f"no instance {name!r}; known instances: {known}")
        return rec.processes[name]

    def select(self, selector: str, namespace: str | None = None) -> list[str]:
        """The instances and gateway proxies whose pod labels match ``selector`` (``key=value[,key=value]``,
        kubectl's equality form), in ``namespace`` when given (kubectl's -n), sorted: what `meshkit logs
        -l` reads. The mesh's own gateways have Istio's labels (``istio: egressgateway``, istio-system)."""
        wanted: dict[str, str] = {}
        for term in (t.strip() for t in selector.split(",") if t.strip()):
            key, sep, value = term.partition("=")
            if not sep or not key.strip():
                raise MeshError(f"selector {selector!r}: expected key=value[,key=value]")
            wanted[key.strip()] = value.strip().removeprefix("=")  # key==value too
        rec = self.record()
        if rec is None:
            raise MeshError("no mesh is running; start one with `meshkit up`")
        pods: list[tuple[str, Mapping[str, str], str]] = [
            (name, kube_gateways.labels_of(proc), name.partition(".")[2] or "default")
            for name, proc in rec.processes.items() if kube_gateways.is_gateway_process(proc)]
        for name, labels in (("ingressgateway", INGRESS_LABELS), (egressgw.PROCESS, egressgw.LABELS)):
            if name in rec.processes:
                pods.append((name, labels, "istio-system"))
        pods += [(inst.name, inst.spec.labels, inst.spec.namespace) for inst in rec.instances()]
        return sorted(name for name, labels, ns in pods if namespace in (None, ns)
                      and all(labels.get(k) == v for k, v in wanted.items()))

    def is_gateway_pod(self, name: str) -> bool:
        """Is ``name`` a gateway proxy (the mesh's ingress or egress gateway, a Gateway's own proxy): a pod
        whose one container is istio-proxy, so `kubectl logs` of it prints the access log."""
        rec = self.record()
        proc = rec.processes.get(name) if rec is not None else None
        return name in ("ingressgateway", egressgw.PROCESS) or (
            proc is not None and kube_gateways.is_gateway_process(proc))

    def log_path(self, name: str, sidecar: bool = False, access: bool = False) -> Path:
        """The log of an instance's app, of its sidecar, or its sidecar's JSON access log."""
        app = self._process(name)  # a clear error for an unknown instance
        # a proxy with no app (the mesh's gateways, a Gateway's own proxy): its own log is the sidecar's
        if name in ("ingressgateway", egressgw.PROCESS) or kube_gateways.is_gateway_process(app):
            return self.state.log(f"{name}.access") if access else Path(app.log)
        if not (sidecar or access):
            return Path(app.log)
        rec = self.record()
        if rec is None or f"{name}.sidecar" not in rec.processes:
            raise MeshError(f"{name} has no sidecar (it runs outside the mesh), so no sidecar or access log")
        if access:
            return self.state.log(f"{name}.access")
        return Path(self._process(f"{name}.sidecar").log)
