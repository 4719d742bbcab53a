"""Kubernetes workload manifests on the local mesh: the runtime runs what the Deployments in the store say.

The control plane's store holds the Namespaces, Services, ServiceAccounts and Deployments a
learner applied (`meshkit apply -f samples/bookinfo/platform/kube/bookinfo.yaml`), checked by
the analyzer (a known sample image, pod labels matching the selector, a Service selecting
pods) and applied atomically with any Istio rules in the same input. `reconcile` is the local
mesh's kubelet and endpoints controller in one: it reads the store, turns every Deployment
into a `WorkloadSpec` (`meshkit.config.workloads.plan_workloads`) and converges the running
instances to them with the pieces `meshkit deploy`/`scale` use (`meshkit.runtime.rollout`):

- an instance no Deployment asks for any more is deregistered, every proxy ACKs, then it stops;
- an instance whose pod changed (labels, service account, sidecar, image's app) is replaced;
- new instances start registered not-ready and turn ready once their app answers and their
  sidecar holds its snapshot and certificate (a `kubectl scale` via re-apply adds or removes
  only the difference);
- a Service no workload backs any more leaves the registry.

Manifest-backed app sets (`catalog.MANIFEST_SETS`, Bookinfo) are their manifests: `up` and
`deploy` apply them and reconcile, `scale` changes the Deployment's ``replicas`` in the store.
`reconcile` also runs the proxies of the Gateway API Gateways that have their own deployment
(`meshkit.runtime.kube_gateways`), as Istio's gateway deployment controller does.
It must not start processes any other way than through `Launcher`, nor touch catalog app sets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

from meshkit.config.gateway_api import GROUP as GATEWAY_API_GROUP
from meshkit.config.gateway_api import KubeGateway
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError
from meshkit.config.resources import Resource
from meshkit.config.workloads import WORKLOAD_KINDS, WorkloadPlan, plan_workloads
from meshkit.control.client import ApiError, ControlClient, ControlUnreachable
from meshkit.runtime import catalog, kube_gateways, pod_files
from meshkit.runtime.catalog import WorkloadSpec
from meshkit.runtime.launch import Launcher, MeshError, Progress, quiet
from meshkit.runtime.record import NAMESPACE, Instance, MeshRecord
from meshkit.runtime.rollout import add_instances, answering_client, remove_instances
from meshkit.runtime.state import StateDir

WORKLOAD_KIND_NAMES = frozenset(cls.__name__ for cls in WORKLOAD_KINDS)
# Gateway API's Gateway (its store kind): one with its own proxy runs a process (`kube_gateways`)
GATEWAY_STORE_KIND = KubeGateway.store_kind
RECONCILED_KINDS = WORKLOAD_KIND_NAMES | {GATEWAY_STORE_KIND}


def spec_of(plan: WorkloadPlan, digest: str = "") -> WorkloadSpec:
    return WorkloadSpec(app=plan.app, version=plan.version, service=plan.service,
                        service_port=plan.service_port, service_account=plan.service_account,
                        sidecar=plan.sidecar, replicas=plan.replicas, deployment=plan.name,
                        pod_labels=plan.labels, namespace=plan.namespace, args=plan.args,
                        listen_port=plan.container_port if plan.app in pod_files.FILE_APPS else None,
                        volumes_digest=digest, concurrency=plan.concurrency, ip_ranges=plan.ip_ranges)


def specs_of(resources: Sequence[Resource], digests: Mapping[tuple[str, str], str] | None = None
             ) -> list[WorkloadSpec]:
    """The Deployments' specs; ``digests``: the digest of each pod's mounted files, for the apps that read
    them (part of the spec: a changed file replaces the pod). Without ``digests`` they are computed."""
    if digests is None:
        volumes, _ = pod_files.volumes_of(resources)
        digests = {key: pod_files.digest(files) for key, files in volumes.items()}
    return [spec_of(plan, digests.get((plan.namespace, plan.name), "")) for plan in plan_workloads(resources)]


def _mount(state: StateDir, rec: MeshRecord, resources: Sequence[Resource]) -> dict[tuple[str, str], str]:
    """Write the pods' mounted files; their digests. A pod whose volumes cannot be mounted keeps running
    as it is when it runs (its files and digest stay), and is refused when it would start."""
    volumes, problems = pod_files.volumes_of(resources)
    running = {(s.namespace, s.workload): s.volumes_digest for s in rec.manifests}
    refused = [text for key, texts in problems.items() if key not in running for text in texts]
    if refused:
        raise MeshError(f"cannot start the pods: {'; '.join(refused)}")
    digests = {key: running[key] for key in problems}
    changed = {key: files for key, files in volumes.items() if running.get(key) != pod_files.digest(files)}
    pod_files.write(state, changed)
    digests.update({key: pod_files.digest(files) for key, files in volumes.items()})
    return digests


def touches_workloads(documents: Sequence[Mapping[str, Any]]) -> bool:
    """Does this input hold a Kubernetes workload object or a Gateway API Gateway (so the runtime must
    reconcile after it)?"""
    return any(doc.get("kind") in WORKLOAD_KIND_NAMES or (
        doc.get("kind") == "Gateway" and str(doc.get("apiVersion", "")).startswith(f"{GATEWAY_API_GROUP}/"))
        for doc in documents)


MAX_REPLICAS = 10  # as `meshkit scale`: every instance is two processes on a laptop


def check_local(documents: Sequence[Mapping[str, Any]]) -> None:
    """What the local mesh cannot run, before anything is applied: more than ``MAX_REPLICAS`` replicas.
    MeshError naming the object and field. (Any namespace runs: instances outside ``default`` are named
    ``<pod>.<namespace>``, `WorkloadSpec.instances`.)"""
    for doc in documents:
        if doc.get("kind") not in WORKLOAD_KIND_NAMES - {"Namespace"}:
            continue
        meta = doc.get("metadata") or {}
        namespace = meta.get("namespace") or NAMESPACE
        ref = f"{doc['kind']}/{namespace}/{meta.get('name')}"
        replicas = (doc.get("spec") or {}).get("replicas", 1) if doc.get("kind") == "Deployment" else 0
        if isinstance(replicas, int) and replicas > MAX_REPLICAS:
            raise MeshError(f"{ref} spec.replicas: {replicas} is more than the local mesh runs "
                            f"({MAX_REPLICAS} at most); nothing was applied")


def default_specs(app_sets: Sequence[str], replicas: Mapping[str, int]) -> list[WorkloadSpec]:
    """The workloads the manifest-backed ``app_sets`` run (their default manifests, with ``replicas``)."""
    documents = [doc for name in app_sets if name in catalog.MANIFEST_SETS
                 for doc in catalog.with_replicas(catalog.default_config(name), replicas)]
    return specs_of(load_resources(documents, origin="meshkit's built-in manifests")) if documents else []


def manifest_workloads(rec: MeshRecord, extra_sets: Sequence[str] = ()) -> set[str]:
    """Workload names whose replicas live in a Deployment: the running manifests' and those of the
    manifest-backed app sets of the record (and ``extra_sets``)."""
    sets = [a for a in (*rec.apps, *extra_sets) if a in catalog.MANIFEST_SETS]
    return {s.qualified for s in rec.manifests} | {s.workload for a in sets for s in catalog.APP_SETS[a]}


def stored_resources(client: ControlClient) -> list[Resource]:
    items = client.get()["items"]
    try:
        return load_resources([item["resource"] for item in items], origin="the control plane's config")
    except ConfigError as error:
        raise MeshError(f"the control plane's config cannot be read: {error}") from None


# -- changing the mesh ----------------------------------------------------------------------------------


def deploy(state: StateDir, rec: MeshRecord, new_sets: Sequence[str], replicas: Mapping[str, int], *,
           progress: Progress = quiet, timeout: float = 60.0) -> None:
    """Apply the manifests of ``new_sets`` and set the ``replicas`` of Deployments, then reconcile."""
    for workload, count in replicas.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 10:
            raise MeshError(f"scale {workload}: replicas must be a whole number from 0 to 10, got {count!r}")
    launcher = Launcher(state, rec)
    client = answering_client(launcher, "")
    documents = [doc for name in new_sets
                 for doc in catalog.with_replicas(catalog.default_config(name), replicas)]
    named = {(doc.get("metadata") or {}).get("name") for doc in documents if doc.get("kind") == "Deployment"}
    previous: list[dict[str, Any]] = []  # the Deployments as they were, put back if the instances fail
    for workload, count in replicas.items():
        if workload in named:
            continue
        name, _, namespace = workload.partition(".")  # "httpbin.foo": Deployment httpbin of namespace foo
        namespace = namespace or NAMESPACE
        try:
            stored = client.get("Deployment", name, namespace)["items"][0]["resource"]
        except ApiError as error:
            raise MeshError(f"scale {workload}: no Deployment {namespace}/{name} in the mesh's config "
                            f"({error.error})") from None
        previous.append(stored)
        documents.extend(catalog.with_replicas([stored], {name: count}))
    if documents:
        try:
            client.apply(documents)
        except ApiError as error:
            details = "; ".join(m.get("message", "") for m in error.messages) or error.error
            raise MeshError(f"the control plane refused the manifests: {details}") from None
    rec.apps = list(dict.fromkeys([*rec.apps, *new_sets]))
    try:
        reconcile(state, rec, progress=progress, timeout=timeout)
    except BaseException:
        if previous:  # a scale that could not start its instances leaves the Deployment as it was
            with contextlib.suppress(ApiError, ControlUnreachable):
                client.apply(previous)
        raise


def reconcile(state: StateDir, rec: MeshRecord, *, progress: Progress = quiet,
              timeout: float = 60.0) -> list[str]:
    """Converge the instances of manifest workloads to the store's Deployments; returns what changed."""
    launcher = Launcher(state, rec)
    client = answering_client(launcher, "")
    stored = stored_resources(client)
    deadline = time.monotonic() + timeout
    digests = _mount(state, rec, stored)  # before any pod starts: its mounted ConfigMaps and Secrets
    changes = converge(launcher, client, specs_of(stored, digests), deadline=deadline, progress=progress)
    # the proxies of Gateway API Gateways with their own deployment, as Istio's gateway controller runs them
    return changes + kube_gateways.reconcile(launcher, client, stored, deadline=deadline)


def _pod(spec: WorkloadSpec) -> WorkloadSpec:
    """What makes an instance itself (everything but how many replicas its Deployment wants)."""
    return dataclasses.replace(spec, replicas=0)


def converge(launcher: Launcher, client: ControlClient, desired: list[WorkloadSpec], *, deadline: float,
             progress: Progress = quiet) -> list[str]:
    rec = launcher.rec
    if desired == rec.manifests:
        return []
    before = {i.name: i for i in rec.instances()}
    old_services = {(s.namespace, s.service) for s in rec.manifests if catalog.registered(s)}
    rec.manifests = list(desired)
    rec.assign_slots()
    after = {i.name: i for i in rec.instances()}
    changed = {name for name, inst in after.items()
               if name in before and _pod(before[name].spec) != _pod(inst.spec)}
    gone = [inst for name, inst in before.items() if name not in after or name in changed]
    changes = [f"{inst.name} removed" for inst in gone if inst.name not in changed]
    if gone:
        progress(f"stopping {len(gone)} instances", 0, 3)
        remove_instances(launcher, client, gone, deadline)
    adding = [inst for inst in rec.instances() if inst.name not in before or inst.name in changed]
    if adding:
        names = {inst.name for inst in adding}

        def undo() -> None:  # the record keeps what really runs: the manifests' instances that were there
            kept = []
            for spec in rec.manifests:
                running = [n for n in spec.instances() if n not in names]
                if running:
                    kept.append(dataclasses.replace(spec, replicas=len(running)))
            rec.manifests = kept
            rec.assign_slots()

        add_instances(launcher, client, adding, new_sets=[], deadline=deadline, progress=progress, undo=undo)
        changes += [f"{inst.name} {'replaced' if inst.name in changed else 'started'}" for inst in adding]
    still = {(s.namespace, s.service) for s in rec.specs() if catalog.registered(s)}
    for namespace, service in sorted(old_services - still):
        try:
            client.request("DELETE", f"registry/services/{namespace}/{service}")
        except ApiError as error:
            if error.status != 404:
                raise
    launcher.save()
    return changes


def instances_of(rec: MeshRecord, deployment: str) -> list[Instance]:
    return [i for i in rec.instances() if i.spec.deployment == deployment]
