"""Starting the pieces of a local mesh and waiting for them: shared by `up`, `deploy`/`scale` and `restart`.

A `Launcher` works on one state dir and its `MeshRecord`: it spawns processes (recording each
one in ``mesh.json`` at once, so `down` finds it even if we crash next), issues CA bootstrap
tokens, registers services and endpoints, applies an app set's default config and waits,
with a deadline, until apps answer and proxies ACK.

Telemetry needs no call: each sidecar names its admin port on its xDS stream and the control
plane scrapes that. The admin token (`meshkit.control.auth`) is created here, before the
control plane starts, if the mesh has none.

CA tokens: each sidecar gets its token in a file of its own, ``<state>/run/tokens/<proxy>.token``
(mode 0600 in a 0700 directory, named by ``--ca-token-file``; never on a command line and not
in the process environment, which children inherit; the CA's token file holds SHA-256 digests
only). The file goes when the sidecar's token is released. `up` revokes the tokens
of an earlier run; later sidecars (new replicas, a restarted sidecar) get a *new* token for
their identity, added beside the running sidecars' ones, which keep working: the control plane
reads its token file again whenever it changed. The record keeps each proxy's token digest, so
the token of a removed or replaced sidecar is revoked once no recorded proxy runs with it.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshkit.control.auth import ensure_admin_token
from meshkit.control.ca import TOKENS_FILE, BootstrapTokens, spiffe_identity
from meshkit.control.client import ApiError, ControlClient
from meshkit.runtime import catalog, readiness, standin_tls
from meshkit.runtime.catalog import WorkloadSpec
from meshkit.runtime.pod_files import FILE_APPS, pod_dir
from meshkit.runtime.ports import PortPlan
from meshkit.runtime.processes import ProcessRecord, python_argv, spawn
from meshkit.runtime.record import Instance, MeshRecord
from meshkit.runtime.standin_tls import StandinTls
from meshkit.runtime.state import StateDir

INGRESS_ID = "istio-ingressgateway-0"
INGRESS_LABELS = {"app": "istio-ingressgateway", "istio": "ingressgateway"}  # its pod's, as Istio's
INGRESS_NAMESPACE = "istio-system"
INGRESS_SERVICE_ACCOUNT = "istio-ingressgateway-service-account"  # as Istio's gateway
INGRESS_PROXY_ID = f"{INGRESS_ID}.{INGRESS_NAMESPACE}"
TOKEN_ENV = "MESHKIT_CA_TOKEN"

Progress = Callable[[str, int, int], None]  # (what is happening, done, total)


class MeshError(RuntimeError):
    """The local mesh could not do what was asked; the text says what and where to look."""


def quiet(_what: str, _done: int, _total: int) -> None:
    return None


def ingress_service(plan: PortPlan) -> dict[str, Any]:
    """Istio's ``istio-ingressgateway`` Service as the local mesh has it, with its local ports: ``http2``
    (Istio's 80), ``https`` (443) and ``tcp`` (31400), and ``127.0.0.1`` as its load balancer's address,
    so the tasks' ``kubectl get service istio-ingressgateway -o jsonpath=...`` lines find them."""
    labels = dict(INGRESS_LABELS)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "istio-ingressgateway", "namespace": INGRESS_NAMESPACE, "labels": labels},
        "spec": {"type": "LoadBalancer", "selector": labels,
                 "ports": [{"name": "http2", "port": plan.ingress, "protocol": "TCP"},
                           {"name": "https", "port": plan.ingress_https, "protocol": "TCP"},
                           {"name": "tcp", "port": plan.ingress_tcp, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}},
    }


def identity(spec: WorkloadSpec) -> str:
    return spiffe_identity(spec.namespace, spec.service_account)


def ingress_identity() -> str:
    return spiffe_identity(INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT)


def sidecar_env() -> dict[str, str]:
    """A sidecar's environment: ours without any CA token (it reads its own from a file)."""
    return {k: v for k, v in os.environ.items() if k != TOKEN_ENV}


def write_token_file(directory: Path, name: str, token: str) -> Path:
    """``directory/name.token`` holding ``token``, 0600 from the first byte, in a 0700 directory."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    path = directory / f"{name}.token"
    tmp = directory / f".{name}.token.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token)
    os.replace(tmp, path)
    return path


def app_env(inst: Instance) -> dict[str, str]:
    """The app's environment: its sidecar as HTTP proxy (none for an out-of-mesh client)."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    if inst.spec.sidecar:
        env["HTTP_PROXY"] = f"http://127.0.0.1:{inst.ports.outbound}"
        env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


@dataclass
class Launcher:
    """Starts, registers and waits for the processes of the mesh recorded in ``rec``."""

    state: StateDir
    rec: MeshRecord

    @property
    def plan(self) -> PortPlan:
        return PortPlan(self.rec.base_port)

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.plan.control}"

    def client(self, timeout: float = 5.0) -> ControlClient:
        """An admin client; the admin token is created here first if the mesh has none yet."""
        token = ensure_admin_token(self.state.control_dir)
        return ControlClient(self.control_url, timeout=timeout, token=token)

    def save(self) -> None:
        self.state.write_mesh(self.rec.to_json())

    # -- processes ----------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ProcessRecord:
        proc = spawn(name, argv, log=self.state.log(name), env=env, owner=self.state.owner)
        self.rec.processes[name] = proc
        self.save()
        return proc

    def _tokens(self) -> BootstrapTokens:
        return BootstrapTokens.open(self.state.control_dir / "ca" / TOKENS_FILE)

    def issue_tokens(self, identities: Iterable[str], *, revoke_earlier: bool) -> dict[str, str]:
        """A new CA bootstrap token per identity; ``revoke_earlier`` (only `up`) drops older ones first."""
        store = self._tokens()
        tokens = {}
        for name in sorted(set(identities)):
            if revoke_earlier:
                store.revoke(name)
                self.rec.credentials.clear()
            tokens[name] = store.issue_token(name)
        return tokens

    @property
    def token_dir(self) -> Path:
        return self.state.run_dir / "tokens"

    def credential(self, proxy: str, token: str) -> Path:
        """`_credential` for a proxy started outside this class (the egress gateway, `runtime.egressgw`)."""
        return self._credential(proxy, token)

    def _credential(self, proxy: str, token: str) -> Path:
        """Record which token ``proxy`` runs with (the one it replaces is revoked); its token file."""
        self.release_credentials([proxy])
        self.rec.credentials[proxy] = BootstrapTokens.digest(token)
        return write_token_file(self.token_dir, proxy, token)

    def release_credentials(self, proxies: Iterable[str]) -> None:
        """Forget the tokens of these proxy processes (removed or replaced); revoke each token no
        other recorded proxy still runs with (the replicas `up` started share one per identity)."""
        proxies = list(proxies)
        for proxy in proxies:
            (self.token_dir / f"{proxy}.token").unlink(missing_ok=True)
        dropped = {self.rec.credentials.pop(p) for p in proxies if p in self.rec.credentials}
        unused = dropped - set(self.rec.credentials.values())
        if unused:
            self._tokens().revoke_digests(unused)

    def standin_tls(self) -> StandinTls:
        """The external stand-ins' CA and certificate (``<home>/external-tls``), made on first use."""
        return standin_tls.ensure(self.state.root, catalog.EXTERNAL_HOSTS)

    def start_app(self, inst: Instance) -> ProcessRecord:
        spec, ports = inst.spec, inst.ports
        args = ["--port", str(ports.app), "--instance", inst.name, "--version", spec.version,
                "--service-port", str(spec.service_port), *catalog.app_args(spec)]
        if spec.app == "external":
            files = self.standin_tls()
            args += ["--tls-port", str(ports.app + catalog.EXTERNAL_TLS_DELTA),
                     "--tls-cert", str(files.cert_file), "--tls-key", str(files.key_file)]
        if spec.app in FILE_APPS:  # its mounted ConfigMaps and Secrets (written by manifests.reconcile)
            args += ["--root", str(pod_dir(self.state, spec.namespace, spec.workload))]
        return self.spawn(inst.name, python_argv("meshkit.apps", spec.app, *args), env=app_env(inst))

    def sidecar_argv(self, inst: Instance) -> list[str]:
        ports = inst.ports
        # proxy.istio.io/config "concurrency" on the pod template: worker processes (default 1: none)
        workers = ["--concurrency", str(inst.spec.concurrency)] if inst.spec.concurrency != 1 else []
        return python_argv(
            "meshkit.proxy", "--control", self.control_url, "--id", inst.proxy_id,
            "--outbound-port", str(ports.outbound), "--inbound-port", str(ports.inbound),
            "--admin-port", str(ports.admin), "--access-log", str(self.state.log(f"{inst.name}.access")),
            *workers,
        )

    def start_sidecar(self, inst: Instance, token: str) -> ProcessRecord:
        token_file = self._credential(inst.sidecar_name, token)
        argv = [*self.sidecar_argv(inst), "--ca-token-file", str(token_file)]
        return self.spawn(inst.sidecar_name, argv, env=sidecar_env())

    def start_instance(self, inst: Instance, tokens: dict[str, str]) -> None:
        inst.app = self.start_app(inst)
        if inst.spec.sidecar:
            inst.sidecar = self.start_sidecar(inst, tokens[identity(inst.spec)])

    def start_ingress(self, token: str) -> None:
        token_file = self._credential("ingressgateway", token)
        plan = self.plan
        self.spawn("ingressgateway", python_argv(
            "meshkit.proxy", "--control", self.control_url, "--id", INGRESS_PROXY_ID,
            "--kind", "gateway", "--outbound-port", str(plan.ingress), "--inbound-port", "0",
            "--https-port", str(plan.ingress_https), "--tcp-port", str(plan.ingress_tcp),
            "--admin-port", str(plan.ingress_admin),
            "--access-log", str(self.state.log("ingressgateway.access")),
            "--ca-token-file", str(token_file),
        ), env=sidecar_env())

    # -- control plane calls -----------------------------------------------------------------------

    def register(self, client: ControlClient, instances: list[Instance], *, healthy: bool = True) -> None:
        """Register the services and (inbound sidecar port) endpoints of the meshed ``instances``; the
        external stand-ins (app ``external``, outside the mesh) as the control plane's external host map,
        with the CA of their HTTPS."""
        for inst in instances:
            if inst.spec.app == "external":
                hosts = catalog.external_hosts(inst.ports.app, inst.ports.app + catalog.EXTERNAL_TLS_DELTA)
                client.set_external(hosts, ca_pem=self.standin_tls().ca_pem)
        meshed = [i for i in instances if catalog.registered(i.spec)]  # out-of-mesh clients serve nothing
        for namespace, name, port in sorted({(i.namespace, i.spec.service, i.spec.service_port)
                                             for i in meshed}):
            client.request("POST", "registry/services",
                           json_body={"name": name, "namespace": namespace, "port": port})
        for inst in meshed:
            sidecar = inst.spec.sidecar  # without one (an nginx outside the mesh) the app is the endpoint
            client.request("POST", "registry/endpoints", json_body={
                "instance": inst.pod, "workload": inst.spec.workload, "service": inst.spec.service,
                "namespace": inst.namespace, "address": "127.0.0.1",
                "port": inst.ports.inbound if sidecar else inst.ports.app,
                "labels": inst.spec.labels, "service_account": inst.spec.service_account,
                "has_sidecar": sidecar, "healthy": healthy, "app_port": inst.ports.app,
            })

    @staticmethod
    def set_healthy(client: ControlClient, instances: list[Instance]) -> None:
        for inst in instances:
            if catalog.registered(inst.spec):
                client.request("PUT", f"registry/endpoints/{inst.namespace}/{inst.pod}/health",
                               json_body={"healthy": True})

    @staticmethod
    def deregister(client: ControlClient, instances: list[Instance]) -> None:
        """Remove the instances' endpoints and scrape targets (their services stay, as in Kubernetes);
        stopping the external stand-ins empties the external host map."""
        for inst in instances:
            if inst.spec.app == "external":
                client.set_external({})
            if not catalog.registered(inst.spec):
                continue
            for path in (f"registry/endpoints/{inst.namespace}/{inst.pod}",
                         f"telemetry/targets/{inst.proxy_id}"):
                try:
                    client.request("DELETE", path)
                except ApiError as error:
                    if error.status != 404:
                        raise

    @staticmethod
    def apply_defaults(client: ControlClient, app_sets: list[str],
                       replicas: dict[str, int] | None = None) -> None:
        """An app set's baseline config (Bookinfo: Istio's bookinfo.yaml, bookinfo-gateway.yaml and its
        subsets; httpbin's subsets), with ``replicas`` set on the named Deployments."""
        for app_set in app_sets:
            docs = catalog.with_replicas(catalog.default_config(app_set), replicas or {})
            if docs:
                client.apply(docs)

    # -- waiting ------------------------------------------------------------------------------------

    def wait(self, ready: Callable[[], bool], deadline: float, what: str, process: str | None) -> None:
        """Poll ``ready`` until ``deadline``; fail early, with its log, if ``process`` exited."""
        while time.monotonic() < deadline:
            if ready():
                return
            proc = self.rec.processes.get(process) if process else None
            if proc is not None and not proc.alive():
                log = readiness.tail(Path(proc.log))
                raise MeshError(f"{what} exited during start-up; see {proc.log}:\n{log}")
            time.sleep(0.05)
        hint = f"; see {self.rec.processes[process].log}" if process and process in self.rec.processes else ""
        raise MeshError(f"timed out waiting for {what}{hint}")

    def wait_control(self, client: ControlClient, deadline: float) -> None:
        self.wait(lambda: readiness.control_answers(client), deadline, "the control plane", "control")

    def wait_ready(self, client: ControlClient, instances: list[Instance], deadline: float, *,
                   ingress: bool) -> None:
        """Every app answers, every proxy ACKed its snapshot, every sidecar is ready (has its certificate)."""
        for inst in instances:
            if inst.spec.app in catalog.TCP_READY_APPS:  # no HTTP to probe: the port accepts a connection
                probe = functools.partial(readiness.tcp_open, "127.0.0.1", inst.ports.app)
            else:
                probe = functools.partial(readiness.http_ok, f"http://127.0.0.1:{inst.ports.app}/healthz")
            self.wait(probe, deadline, f"app {inst.name}", inst.name)
        proxy_ids = [i.proxy_id for i in instances if i.spec.sidecar]
        if ingress:
            proxy_ids.append(INGRESS_PROXY_ID)
        try:
            self.wait(lambda: readiness.all_synced(client, proxy_ids), deadline,
                      "every sidecar to ACK its snapshot", None)
        except MeshError as error:
            raise MeshError(f"{error}; not synced: {readiness.unsynced(client, proxy_ids)}") from None
        admins = {i.sidecar_name: i.ports.admin for i in instances if i.spec.sidecar}
        if ingress:
            admins["ingressgateway"] = self.plan.ingress_admin
        for name, port in admins.items():
            ready_url = f"http://127.0.0.1:{port}/healthz/ready"
            self.wait(functools.partial(readiness.http_ok, ready_url), deadline,
                      f"{name} to be ready (snapshot and workload certificate)", name)

    def wait_everything_synced(self, client: ControlClient, deadline: float) -> None:
        """No recompilation pending and every connected proxy ACKed the current snapshot."""
        while True:
            left = deadline - time.monotonic()
            if readiness.everything_synced(client, max(0.0, min(left, 5.0))):  # < the client timeout
                return
            if time.monotonic() >= deadline:
                raise MeshError("timed out waiting for every proxy to ACK the new snapshot; "
                                "see `meshkit proxy-status`")

