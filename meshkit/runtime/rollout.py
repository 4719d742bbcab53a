"""Changing a running local mesh: deploy app sets, scale workloads, restart an instance.

What `kubectl apply -f samples/sleep/sleep.yaml`, `kubectl scale deployment reviews-v1
--replicas=2` and a pod restart do in a cluster, for the processes of the local mesh:

- **scale down** first: the removed instances' endpoints and scrape targets are deregistered,
  every proxy ACKs the snapshot without them (so no caller is routed to them any more), then
  their app and sidecar processes stop and leave the record;
- **add** (new app sets, more replicas): each new instance takes the lowest free port slot, gets
  a new CA token for its identity (running sidecars keep theirs), is registered *not ready*
  (``healthy: false``, so nobody routes to it yet), then its app and sidecar start; once the
  app answers and the sidecar has its snapshot and certificate, the endpoint turns ready. A new
  app set's default config (its DestinationRule subsets) is applied as `up` does. The call
  returns once every connected proxy has ACKed the current snapshot. If the addition fails,
  what it started is stopped and deregistered again and the record says what runs.

The record (``mesh.json``) is written before any process starts or stops, so `down`, `status`,
`kill` and `restart` — and `down` after a crash of this process — always know every process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from meshkit.control.client import ApiError, ControlClient, ControlUnreachable
from meshkit.runtime import catalog, readiness
from meshkit.runtime.launch import Launcher, MeshError, Progress, identity, ingress_identity, quiet
from meshkit.runtime.ports import busy_ports, name_holders
from meshkit.runtime.processes import ProcessRecord, stop
from meshkit.runtime.record import Instance, MeshRecord
from meshkit.runtime.state import StateDir


def replica_counts(apps: list[str], replicas: dict[str, int]) -> dict[str, int]:
    """Instances per workload of ``apps`` with ``replicas`` overrides (ValueError for unknown names)."""
    return {spec.workload: spec.replicas for spec in catalog.resolve(apps, replicas)}


def overrides(apps: list[str], counts: dict[str, int]) -> dict[str, int]:
    """The ``replicas`` entries that differ from the catalog's defaults (what `up --replicas` would say)."""
    defaults = replica_counts(apps, {})
    return {w: n for w, n in sorted(counts.items()) if w in defaults and defaults[w] != n}


def deploy(state: StateDir, rec: MeshRecord, apps: list[str], replicas: dict[str, int], *,
           progress: Progress = quiet, timeout: float = 60.0) -> None:
    """Add the app sets of ``apps`` not running yet and scale workloads to ``replicas``; wait for ACKs.

    Only for the catalog's app sets: the manifest-backed ones (`catalog.MANIFEST_SETS`) change through
    their Deployments (`meshkit.runtime.manifests`).
    """
    running = rec.catalog_sets()
    new_sets = [a for a in dict.fromkeys(apps) if a not in running]
    old_counts = replica_counts(running, rec.replicas)
    target_apps = running + new_sets
    target = replica_counts(target_apps, {**rec.replicas, **replicas})  # validates every name first
    launcher = Launcher(state, rec)
    client = answering_client(launcher, "")
    deadline = time.monotonic() + timeout
    shrunk = {w: min(n, target[w]) for w, n in old_counts.items()}
    if shrunk != old_counts:
        progress("scaling down", 0, 3)
        _remove(launcher, client, running, shrunk, deadline)
    if target_apps != running or target != replica_counts(running, rec.replicas):
        progress("starting the new instances", 1, 3)
        _add(launcher, client, target_apps, target, new_sets=new_sets, deadline=deadline, progress=progress)
    progress("deployed", 3, 3)


def answering_client(launcher: Launcher, what: str) -> ControlClient:
    """A client of the mesh's control plane; MeshError (prefixed with ``what``) when it does not answer."""
    client = launcher.client(timeout=10.0)
    if not readiness.control_answers(client):
        raise MeshError(f"{what}the mesh's control plane at {launcher.control_url} does not answer; "
                        "start the mesh again with `meshkit down` and `meshkit up`")
    return client


def _forget(launcher: Launcher, instances: list[Instance]) -> None:
    """Drop the app and sidecar processes of ``instances`` from the record; revoke their tokens."""
    for inst in instances:
        launcher.rec.processes.pop(inst.name, None)
        launcher.rec.processes.pop(inst.sidecar_name, None)
    launcher.release_credentials(i.sidecar_name for i in instances)


def _reshape(rec: MeshRecord, apps: list[str], counts: dict[str, int]) -> None:
    """The record's catalog app sets become ``apps`` with ``counts``; manifest-backed sets stay listed."""
    rec.apps = list(dict.fromkeys([*(a for a in rec.apps if a in catalog.MANIFEST_SETS), *apps]))
    rec.replicas = overrides(apps, counts)
    rec.assign_slots()


def _remove(launcher: Launcher, control: ControlClient, apps: list[str], counts: dict[str, int],
            deadline: float) -> None:
    rec = launcher.rec
    before = rec.instances()
    _reshape(rec, apps, counts)
    kept = set(rec.instance_names())
    remove_instances(launcher, control, [i for i in before if i.name not in kept], deadline)


def remove_instances(launcher: Launcher, control: ControlClient, gone: list[Instance],
                     deadline: float) -> None:
    """Deregister ``gone``, wait until every proxy ACKed that, then stop them and drop them from the record.

    The record must already say what stays (its processes of ``gone`` are still listed).
    """
    launcher.save()  # the processes stay in the record until they are stopped
    launcher.deregister(control, gone)
    launcher.wait_everything_synced(control, deadline)  # nobody routes to them any more
    stop([p for i in gone for p in (i.app, i.sidecar) if p is not None])
    _forget(launcher, gone)
    launcher.save()


def _restore(rec: MeshRecord, apps: list[str], replicas: dict[str, int]) -> None:
    """Put back the app sets and replica overrides the record had before a failed addition."""
    rec.apps, rec.replicas = apps, replicas
    rec.assign_slots()


def _add(launcher: Launcher, control: ControlClient, apps: list[str], counts: dict[str, int], *,
         new_sets: list[str], deadline: float, progress: Progress) -> None:
    rec = launcher.rec
    before_apps, before_replicas = list(rec.apps), dict(rec.replicas)
    running = set(rec.instance_names())
    _reshape(rec, apps, counts)
    adding = [i for i in rec.instances() if i.name not in running]
    add_instances(launcher, control, adding, new_sets=new_sets, deadline=deadline, progress=progress,
                  undo=lambda: _restore(rec, before_apps, before_replicas))


def add_instances(launcher: Launcher, control: ControlClient, adding: list[Instance], *,
                  new_sets: list[str], deadline: float, progress: Progress, undo: Callable[[], None]) -> None:
    """Start ``adding`` (already in the record's shape) registered not-ready, then ready once they answer.

    On failure what was started is stopped and deregistered, ``undo()`` puts the record's shape back
    and the error is raised again.
    """
    rec = launcher.rec
    ports = [p for i in adding for p in (i.ports.admin, i.ports.outbound, i.ports.inbound, i.ports.app)]
    busy = busy_ports(ports)
    if busy:
        undo()
        raise MeshError(f"ports {name_holders(busy)} on 127.0.0.1 are in use, needed by "
                        f"{', '.join(i.name for i in adding)}; stop what uses them")
    launcher.save()
    try:
        tokens = launcher.issue_tokens({identity(i.spec) for i in adding if i.spec.sidecar},
                                       revoke_earlier=False)
        launcher.register(control, adding, healthy=False)
        launcher.apply_defaults(control, new_sets)
        progress(f"starting {len(adding)} instances with their sidecars", 1, 3)
        for inst in adding:
            launcher.start_instance(inst, tokens)
        progress("waiting for the new apps to answer and their sidecars to ACK", 2, 3)
        launcher.wait_ready(control, adding, deadline, ingress=False)
        launcher.set_healthy(control, adding)
        launcher.wait_everything_synced(control, deadline)
    except BaseException:
        with contextlib.suppress(ApiError, ControlUnreachable):
            launcher.deregister(control, adding)
        stop([p for i in adding for p in (rec.processes.get(i.name), rec.processes.get(i.sidecar_name))
              if p is not None])
        _forget(launcher, adding)
        undo()
        launcher.save()
        raise


def restart(state: StateDir, rec: MeshRecord, name: str, *, timeout: float = 30.0) -> None:
    """Start an instance's app again (stopping it first if it runs), and its sidecar if that died.

    ``ingressgateway`` restarts the gateway proxy. A new sidecar gets a new CA token for its
    identity, so it obtains its certificate again.
    """
    launcher = Launcher(state, rec)
    deadline = time.monotonic() + timeout
    client = answering_client(launcher, f"restart {name}: ")
    if name == "ingressgateway":
        _stop_recorded(rec.processes.get(name))
        tokens = launcher.issue_tokens([ingress_identity()], revoke_earlier=False)
        launcher.start_ingress(tokens[ingress_identity()])
        launcher.wait_ready(client, [], deadline, ingress=True)  # its snapshot ACKed, its certificate held
        return
    inst = next((i for i in rec.instances() if i.name == name), None)
    if inst is None:
        known = ", ".join(["ingressgateway", *rec.instance_names()])
        raise MeshError(f"no instance {name!r}; known instances: {known}")
    _stop_recorded(inst.app)
    inst.app = launcher.start_app(inst)
    if inst.spec.sidecar and (inst.sidecar is None or not inst.sidecar.alive()):
        _stop_recorded(inst.sidecar)
        token = launcher.issue_tokens([identity(inst.spec)], revoke_earlier=False)[identity(inst.spec)]
        inst.sidecar = launcher.start_sidecar(inst, token)
    launcher.wait_ready(client, [inst], deadline, ingress=False)


def _stop_recorded(proc: ProcessRecord | None) -> None:
    if proc is not None:
        stop([proc])
