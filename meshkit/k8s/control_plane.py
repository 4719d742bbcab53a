"""The control plane on Kubernetes: config from the Istio CRDs, endpoints from EndpointSlices and Pods.

`KubernetesSync` lists and watches (in all namespaces) VirtualServices, DestinationRules,
PeerAuthentications, AuthorizationPolicies, Services, EndpointSlices and Pods, keeps the
objects in memory and mirrors them into the control plane's OWN store and registry — the
single place the push server reads from — so sidecars get their snapshots exactly as in
local mode:

* the config: ``ConfigStore.mirror`` makes the store hold exactly the cluster's Istio objects,
  one revision per batch of changes, summarised ``kubernetes: created VirtualService/ns/x, ...``
  (``meshkit history`` shows them). The store is owned by Kubernetes: an apply, delete or
  rollback through the control plane's API is refused with "use kubectl". An object that does
  not load (it bypassed the admission webhook) is left out and logged with the loader's message;
* the registry: Services, EndpointSlices and Pods become services and endpoints, and pods with
  a sidecar in no Service become service-less workloads
  (`meshkit.k8s.sources.desired_registry`); registrations that are no longer in the
  cluster are removed;
* telemetry: every endpoint with a sidecar is a scrape target
  (``http://<pod IP>:15000/stats/prometheus``, the sidecar's admin port), as the local runtime
  registers its sidecars.

Nothing is mirrored before every watched type has been listed once (a half-listed cluster
would look like deletions). Watches resume from the last resourceVersion; a watch error
relists that type (so nothing missed in between survives), with back-off up to 5 s. An Istio
kind whose CRD is not installed is mirrored as empty and listed again every 30 s.

`run_kubernetes_control_plane` starts a control plane (`meshkit.control.server`) whose CA
authenticates CSRs by TokenReview (`meshkit.k8s.tokenreview`), plus the sync;
`serve_kubernetes` is ``meshkit control --kubernetes``. Unlike the local runtime, this module
runs the control plane in-process (it is the control plane's backend, not a client of it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from meshkit.config.resources import Resource
from meshkit.control.address import default_control_dir
from meshkit.control.auth import ADMIN_SECRET, ADMIN_SECRET_KEY
from meshkit.control.registry import RegisteredEndpoint, ServiceRegistry
from meshkit.control.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ControlPlane,
    RunningControlPlane,
    run_control_plane,
    serve_until_signalled,
)
from meshkit.control.store import ConfigStore
from meshkit.control.telemetry import Scraper
from meshkit.k8s import names
from meshkit.k8s.api import KubeAccess, KubeApi, KubeApiError, ResourceType
from meshkit.k8s.sources import (
    ENDPOINT_SLICES,
    ISTIO_TYPES,
    PODS,
    REGISTRY_TYPES,
    SERVICES,
    STORE_KINDS,
    ObjectKey,
    desired_registry,
    istio_resource,
    object_key,
)
from meshkit.k8s.tokenreview import TokenReviewAuthenticator

log = logging.getLogger("meshkit.k8s.control_plane")

SOURCE = "kubernetes"
OWNER_ADVICE = ("change it in the cluster (kubectl apply -f FILE / kubectl delete -f FILE); "
                "this API only reads it")
SIDECAR_ADMIN_PORT = names.PORT_ADMIN  # where an injected sidecar serves /stats/prometheus
# Kubernetes' own namespaces and kind's storage: their services are no part of the mesh
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "local-path-storage"})


@dataclass(frozen=True)
class SyncOptions:
    """How the sync follows the cluster."""

    ignored_namespaces: frozenset[str] = SYSTEM_NAMESPACES  # for services, endpoints and pods
    watch_timeout_s: int = 300  # the server ends a watch after this long; it resumes
    debounce_s: float = 0.01  # a burst of events within this costs one mirror
    max_backoff_s: float = 5.0
    missing_crd_retry_s: float = 30.0


@dataclass
class SyncStats:
    """Counters for tests and the log."""

    lists: int = 0
    events: int = 0
    mirrors: int = 0
    errors: int = 0
    left_out: dict[str, str] = field(default_factory=dict)  # object -> why it is not mirrored


class KubernetesSync:
    """Follows the cluster and mirrors it into ``store`` and ``registry``. Runs on one event loop."""

    def __init__(self, api: KubeApi, store: ConfigStore, registry: ServiceRegistry,
                 options: SyncOptions | None = None, *, scraper: Scraper | None = None) -> None:
        self.api = api
        self.store = store
        self.registry = registry
        # a cluster has DNS: ServiceEntry hosts resolve by name (no stand-ins; meshkit.config.egress)
        registry.set_external({}, real_dns=True)
        self.scraper = scraper
        self._scrape_targets: set[str] = set()  # the targets this sync added
        self.options = options or SyncOptions()
        self.stats = SyncStats()
        self._objects: dict[ResourceType, dict[ObjectKey, dict[str, Any]]] = {
            t: {} for t in (*ISTIO_TYPES, *REGISTRY_TYPES)
        }
        self._listed: set[ResourceType] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: asyncio.TimerHandle | None = None
        self._dirty: set[ResourceType] = set()  # types changed since the last mirror
        self._synced = asyncio.Event()
        self._config_done = False
        self._registry_done = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Take the store over and start following every watched type."""
        self.store.own(SOURCE, OWNER_ADVICE)
        self._tasks = [asyncio.create_task(self._follow(t), name=f"kubernetes watch {t}")
                       for t in self._objects]

    async def wait_synced(self, timeout_s: float) -> bool:
        """Whether the cluster has been mirrored once (every type listed) within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), timeout_s)
        return self._synced.is_set()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- following one type ---------------------------------------------------------------------

    async def _follow(self, resource_type: ResourceType) -> None:
        backoff = 0.1
        failures = 0  # in a row; the first (and every 10th) is a warning, the rest debug
        while True:
            try:
                items, version = await self.api.list(resource_type)
                self.stats.lists += 1
                self._objects[resource_type] = {object_key(obj): obj for obj in items}
                self._listed.add(resource_type)
                self._schedule(resource_type)
                if failures:
                    log.info("kubernetes %s: listed again after %d failed attempt(s)",
                             resource_type, failures)
                backoff, failures = 0.1, 0
                while True:  # a watch the server ended normally resumes where it was
                    version = await self._watch(resource_type, version)
            except KubeApiError as error:
                self.stats.errors += 1
                if error.status == 404 and resource_type in ISTIO_TYPES:
                    log.warning("%s is not served (is its CRD installed?); retrying in %.0f s",
                                resource_type, self.options.missing_crd_retry_s)
                    self._objects[resource_type] = {}
                    self._listed.add(resource_type)
                    self._schedule(resource_type)
                    await asyncio.sleep(self.options.missing_crd_retry_s)
                    continue
                if error.status == 410:  # Gone: the version is too old, list again at once
                    continue
                failures += 1
                level = logging.WARNING if failures % 10 == 1 else logging.DEBUG
                log.log(level, "kubernetes %s: %s; listing again in %.1f s", resource_type, error, backoff)
            except Exception:  # a bug must not end the watch of this type for good
                self.stats.errors += 1
                failures += 1
                log.exception("kubernetes %s: unexpected error; listing again in %.1f s",
                              resource_type, backoff)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.options.max_backoff_s)

    async def _watch(self, resource_type: ResourceType, version: str | None) -> str | None:
        """Apply watch events until the server ends the watch; the last resourceVersion seen."""
        objects = self._objects[resource_type]
        async for event in self.api.watch(resource_type, version, self.options.watch_timeout_s):
            obj = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "") or version
            kind = event.get("type")
            if kind in ("ADDED", "MODIFIED"):
                objects[object_key(obj)] = obj
            elif kind == "DELETED":
                objects.pop(object_key(obj), None)
            else:
                continue  # BOOKMARK: only the version
            self.stats.events += 1
            self._schedule(resource_type)
        return version

    # -- mirroring ------------------------------------------------------------------------------

    def _schedule(self, changed: ResourceType) -> None:
        self._dirty.add(changed)
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.options.debounce_s, self._mirror)

    def _mirror(self) -> None:
        self._pending = None
        try:
            self._mirror_all()
        except Exception:  # logged; the next event mirrors everything again
            self.stats.errors += 1
            self._dirty.update(self._objects)
            log.exception("kubernetes: mirroring failed")

    def _mirror_all(self) -> None:
        """Mirror the parts whose types changed, once every type of that part has been listed."""
        dirty, self._dirty = self._dirty, set()
        if dirty & set(ISTIO_TYPES) and all(t in self._listed for t in ISTIO_TYPES):
            self._mirror_config()
            self._config_done = True
        if dirty & set(REGISTRY_TYPES) and all(t in self._listed for t in REGISTRY_TYPES):
            self._mirror_registry()
            self._registry_done = True
        self.stats.mirrors += 1
        if self._config_done and self._registry_done and not self._synced.is_set():
            log.info("kubernetes: mirrored (revision %d, %d services, %d endpoints)", self.store.revision,
                     len(self.registry.services()), len(self.registry.endpoints()))
            self._synced.set()

    def _mirror_config(self) -> None:
        desired: list[Resource] = []
        left_out: dict[str, str] = {}
        for resource_type in ISTIO_TYPES:
            for (namespace, name), obj in sorted(self._objects[resource_type].items()):
                resource, messages = istio_resource(obj, resource_type)
                if resource is None:
                    ref = f"{STORE_KINDS[resource_type]}/{namespace}/{name}"
                    left_out[ref] = "; ".join(map(str, messages))
                else:
                    desired.append(resource)
        self._note_left_out("config", left_out)
        result = self.store.mirror(desired, source=SOURCE)
        if result.changed:
            log.info("kubernetes: revision %d: %s", result.revision,
                     ", ".join(f"{action} {ref}" for ref, action in result.actions))

    def _mirror_registry(self) -> None:
        desired = desired_registry(self._objects[SERVICES].values(), self._objects[ENDPOINT_SLICES].values(),
                                   self._objects[PODS], self.options.ignored_namespaces)
        self._note_left_out("registry", {line.split(": ", 1)[0]: line.split(": ", 1)[-1]
                                         for line in desired.left_out})
        registry = self.registry
        for service in desired.services.values():
            registry.register_service(service)
        for registered in registry.endpoints():
            e = registered.endpoint
            if (e.namespace, e.instance) not in desired.endpoints:
                registry.deregister_endpoint(e.namespace, e.instance)
        for registered in desired.endpoints.values():
            registry.register_endpoint(registered)
        for service in registry.services():
            if (service.namespace, service.name) not in desired.services:
                registry.deregister_service(service.namespace, service.name)
        registry.set_workloads(desired.workloads)
        if self.scraper is not None:
            self._mirror_scrape_targets(self.scraper, desired.endpoints.values())

    def _mirror_scrape_targets(self, scraper: Scraper, endpoints: Iterable[RegisteredEndpoint]) -> None:
        targets = {}
        for registered in endpoints:
            e = registered.endpoint
            if e.has_sidecar:
                host = f"[{e.address}]" if ":" in e.address else e.address
                targets[f"{e.instance}.{e.namespace}"] = f"http://{host}:{SIDECAR_ADMIN_PORT}/stats/prometheus"
        for name in self._scrape_targets - set(targets):
            scraper.remove_target(name)
        for name, url in targets.items():
            scraper.set_target(name, url)
        self._scrape_targets = set(targets)

    def _note_left_out(self, part: str, now: dict[str, str]) -> None:
        """Log what is newly left out (once, not at every mirror) and keep the current list."""
        previous = {k: v for k, v in self.stats.left_out.items() if k.startswith(f"{part} ")}
        current = {f"{part} {k}": v for k, v in now.items()}
        for key, why in current.items():
            if previous.get(key) != why:
                log.warning("kubernetes: not mirrored: %s: %s", key.split(" ", 1)[1], why)
        for key in previous:
            self.stats.left_out.pop(key, None)
        self.stats.left_out.update(current)


# -- the control plane with this backend -------------------------------------------------------------


class RunningKubernetesControlPlane:
    """A control plane fed from a cluster; ``await close()`` (or ``async with``) stops all of it."""

    def __init__(self, running: RunningControlPlane, sync: KubernetesSync, api: KubeApi) -> None:
        self.running = running
        self.sync = sync
        self.api = api
        self.readiness: web.AppRunner | None = None  # the /ready listener (``ready_port``)

    async def serve_readiness(self, host: str, port: int) -> int:
        """``GET /ready``: 200 once the cluster has been mirrored, 503 before (the pod's readiness
        probe: a Service should not send sidecars to a control plane with an empty registry)."""

        async def ready(_: web.Request) -> web.Response:
            if self.sync.synced:
                return web.Response(text="ready\n")
            return web.Response(status=503, text=f"not synced with the cluster yet: {self.sync.stats}\n")

        app = web.Application()
        app.router.add_get("/ready", ready)
        self.readiness = web.AppRunner(app, access_log=None)
        await self.readiness.setup()
        site = web.TCPSite(self.readiness, host, port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def control_plane(self) -> ControlPlane:
        return self.running.control_plane

    async def close(self) -> None:
        if self.readiness is not None:
            await self.readiness.cleanup()
            self.readiness = None
        await self.sync.close()
        await self.running.close()
        await self.api.close()

    async def __aenter__(self) -> RunningKubernetesControlPlane:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


CA_ROOT_SECRET = "meshkit-ca-root"  # in the control plane's namespace (meshkit.k8s.names.SYSTEM_NAMESPACE)
CA_NAMESPACE = "meshkit-system"


async def ensure_ca_root(api: KubeApi, ca_dir: Path, namespace: str = CA_NAMESPACE,
                         name: str = CA_ROOT_SECRET) -> str:
    """Keep the mesh's root CA in a Secret, so it outlives the control plane's pod.

    The first control plane creates the root (`CertificateAuthority.open` in ``ca_dir``) and
    stores it in the Secret; every later one (a restart, a rescheduled pod with an empty
    ``emptyDir``) writes the Secret's root into ``ca_dir`` before its CA opens it, so sidecars
    keep trusting each other's certificates. Two starting at once: the loser of the create
    (409) takes the winner's root. Returns "created" or "loaded".
    """
    from meshkit.control import ca  # noqa: PLC0415 (only with the CA)

    path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
    secret = await api.get(path)
    outcome = "loaded"
    if secret is None:
        ca.CertificateAuthority.open(ca_dir)  # the root there, or a new self-signed one
        data = {filename: base64.b64encode((ca_dir / filename).read_bytes()).decode()
                for filename in (ca.ROOT_CERT_FILE, ca.ROOT_KEY_FILE)}
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/part-of": "meshkit"}}}
        try:
            await api.create(f"/api/v1/namespaces/{namespace}/secrets", body)
            log.info("kubernetes: stored the mesh's root CA in Secret %s/%s", namespace, name)
            return "created"
        except KubeApiError as error:
            if error.status != 409:
                raise
            secret = await api.get(path)  # another control plane stored its root first
            if secret is None:
                raise
    data = secret.get("data") or {}
    missing = [f for f in (ca.ROOT_CERT_FILE, ca.ROOT_KEY_FILE) if not data.get(f)]
    if missing:
        raise KubeApiError(0, f"Secret {namespace}/{name}: no {', '.join(missing)} in data; "
                              f"delete the Secret to let the control plane create a new root")
    _write_root(ca_dir, {filename: base64.b64decode(data[filename])
                         for filename in (ca.ROOT_CERT_FILE, ca.ROOT_KEY_FILE)})
    log.info("kubernetes: the mesh's root CA comes from Secret %s/%s", namespace, name)
    return outcome


def _write_root(ca_dir: Path, files: dict[str, bytes]) -> None:
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for filename, content in files.items():
        target = ca_dir / filename
        target.touch(mode=0o600)
        target.write_bytes(content)


async def run_kubernetes_control_plane(access: KubeAccess, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                                       state_dir: Path | str | None = None, *,
                                       sync_options: SyncOptions | None = None,
                                       **options: Any) -> RunningKubernetesControlPlane:
    """A control plane on ``host:port`` whose config and registry follow the cluster at ``access``.

    With the CA (the default), CSRs are authenticated by TokenReview. ``options`` go to
    `meshkit.control.server.ControlPlane` (``with_ca``, ``ca_ttl``, ``debounce``...). Returns once it
    listens; ``sync.wait_synced()`` tells when the cluster has been mirrored.
    """
    api = KubeApi(access)
    try:
        if options.get("with_ca", True):
            directory = Path(state_dir) if state_dir is not None else default_control_dir()
            await ensure_ca_root(api, directory / "ca")
        running = await run_control_plane(host, port, state_dir,
                                          authenticator=TokenReviewAuthenticator(api), **options)
    except BaseException:
        await api.close()
        raise
    plane = running.control_plane
    await publish_admin_token(api, plane.admin_token)
    sync = KubernetesSync(api, plane.store, plane.registry, sync_options, scraper=plane.telemetry)
    sync.start()
    return RunningKubernetesControlPlane(running, sync, api)


def admin_secret_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{ADMIN_SECRET}"


async def publish_admin_token(api: KubeApi, token: str) -> None:
    """Keep the admin token in the Secret ``meshkit-control-admin`` of the control plane's namespace
    ($POD_NAMESPACE, else meshkit-system): whoever RBAC lets read it may call the API as admin."""
    namespace = os.environ.get("POD_NAMESPACE") or "meshkit-system"
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": ADMIN_SECRET, "namespace": namespace,
                           "labels": {"app.kubernetes.io/managed-by": "meshkit"}},
              "data": {ADMIN_SECRET_KEY: base64.b64encode(token.encode()).decode()}}
    try:
        try:
            await api.create(f"/api/v1/namespaces/{namespace}/secrets", secret)
        except KubeApiError as error:
            if error.status != 409:
                raise
            await api.replace(admin_secret_path(namespace), secret)
    except KubeApiError as error:
        log.warning("kubernetes: could not publish the admin token in secret %s/%s (%s); the CLI on "
                    "this cluster will get 401s", namespace, ADMIN_SECRET, error)


def serve_kubernetes(access: KubeAccess, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                     state_dir: Path | str | None = None, *, announce: Callable[[str], Any] = print,
                     ready_port: int | None = None, **options: Any) -> None:
    """``meshkit control --kubernetes``: run until SIGINT/SIGTERM, then stop gracefully."""

    async def start() -> RunningKubernetesControlPlane:
        running = await run_kubernetes_control_plane(access, host, port, state_dir, **options)
        if ready_port is not None:
            await running.serve_readiness(host, ready_port)
        announce(f"meshkit control plane listening on {running.url}{running.running.tls_note} (config and "
                 f"endpoints from the "
                 f"cluster at {access.server}; state: {running.control_plane.directory})")
        return running

    serve_until_signalled(start, announce)
