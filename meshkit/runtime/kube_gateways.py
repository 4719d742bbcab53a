"""The gateway proxies of Gateway API Gateways that have their own deployment, on the local mesh.

Istio's gateway deployment controller runs a Deployment and a Service ``<name>-istio`` for every
Gateway of class ``istio``. The local mesh does so for the Gateways with their own proxy
(`meshkit.config.gateway_api.KubeGateway.deployed`: annotation ``networking.istio.io/service-type:
ClusterIP``, such as the ``cnn-egress-gateway`` of Istio's "Egress Gateways" task); the others are
served by its one ingress. `reconcile` runs after every `meshkit apply`/`delete` that touches a
Gateway (with `manifests.reconcile`), as the controller would:

- a new Gateway gets a gateway proxy process ``<name>-istio-0`` (``<name>-istio-0.<namespace>``
  outside ``default``), started as `runtime.egressgw` starts the egress gateway: its own CA token
  for ``spiffe://cluster.local/ns/<namespace>/sa/<name>-istio``, registered first (Service
  ``<name>-istio`` and an endpoint with the pod labels ``gateway.networking.k8s.io/gateway-name:
  <name>``, which its snapshot's Gateway selects), then started and waited for (ACK, ready);
- a deleted Gateway's proxy is deregistered, then stopped.

Its one listener serves every listener of the Gateway (it tells TLS from HTTP by the first bytes).
Ports: block 0 of the port plan, HTTP ``+84 + 2k`` and admin ``+4 + k`` for slot ``k`` (at most
`MAX_GATEWAYS`). Its access log is ``<process>.access`` (`meshkit logs <process> --access`, or
``meshkit logs -l gateway.networking.k8s.io/gateway-name=<name> -c istio-proxy``). This module
starts and stops processes through `Launcher` only; it must not compile config or decide routing.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from meshkit.config.gateway_deployments import deployed_gateways, proxy_labels
from meshkit.config.resources import Resource
from meshkit.control.ca import spiffe_identity
from meshkit.control.client import ApiError, ControlClient
from meshkit.runtime import readiness
from meshkit.runtime.launch import Launcher, MeshError, sidecar_env
from meshkit.runtime.ports import busy_ports
from meshkit.runtime.processes import ProcessRecord, python_argv, stop

MAX_GATEWAYS = 4
HTTP_OFFSET = 84  # block 0: beside the ingress (+80) and the egress gateway (+82)
ADMIN_OFFSET = 4
_OTHER_GATEWAYS = frozenset({"ingressgateway", "egressgateway"})  # the mesh's own gateway processes


@dataclass(frozen=True)
class GatewayProxy:
    """The proxy of one Gateway: its names (Istio's), labels and namespace."""

    gateway: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    port: int  # the Service's port: the Gateway's first listener's

    @property
    def service(self) -> str:
        return f"{self.gateway}-istio"

    @property
    def instance(self) -> str:
        return f"{self.service}-0"

    @property
    def process(self) -> str:
        """Its process and log name: ``cnn-egress-gateway-istio-0`` (``...-0.<namespace>`` elsewhere)."""
        return self.instance if self.namespace == "default" else f"{self.instance}.{self.namespace}"

    @property
    def proxy_id(self) -> str:
        return f"{self.instance}.{self.namespace}"


def proxies_of(resources: Sequence[Resource]) -> list[GatewayProxy]:
    """The gateway proxies the config asks for."""
    return [GatewayProxy(g.metadata.name, g.metadata.namespace, tuple(sorted(proxy_labels(g).items())),
                         g.spec.listeners[0].port) for g in deployed_gateways(resources)]


def ports(base: int, slot: int) -> tuple[int, int]:
    """(listener, admin) of slot ``slot``."""
    return base + HTTP_OFFSET + 2 * slot, base + ADMIN_OFFSET + slot


def is_gateway_process(proc: ProcessRecord) -> bool:
    """A Gateway's proxy: a gateway process named ``<name>-istio-0[.<namespace>]``."""
    argv = list(proc.argv)
    return (proc.name not in _OTHER_GATEWAYS and "--kind" in argv and argv[argv.index("--kind") + 1:][:1] == [
        "gateway"] and proc.name.partition(".")[0].endswith("-istio-0"))


def labels_of(proc: ProcessRecord) -> dict[str, str]:
    """The pod labels of a Gateway's proxy process (for `meshkit logs -l`): its Gateway's name in Istio's
    labels, as `meshkit.config.gateway_deployments.proxy_labels` gives them."""
    gateway = proc.name.partition(".")[0].removesuffix("-istio-0")
    return {"gateway.networking.k8s.io/gateway-name": gateway, "istio.io/gateway-name": gateway,
            "app": f"{gateway}-istio"}


def _slot(proc: ProcessRecord, base: int) -> int | None:
    argv = list(proc.argv)
    with contextlib.suppress(ValueError, IndexError):
        return (int(argv[argv.index("--outbound-port") + 1]) - base - HTTP_OFFSET) // 2
    return None


def _delete(client: ControlClient, path: str) -> None:
    try:
        client.request("DELETE", path)
    except ApiError as error:
        if error.status != 404:
            raise


def reconcile(launcher: Launcher, client: ControlClient, resources: Sequence[Resource], *,
              deadline: float) -> list[str]:
    """Run one proxy per deployed Gateway of ``resources``, stop those of deleted Gateways; what changed."""
    rec = launcher.rec
    desired = {p.process: p for p in proxies_of(resources)}
    current = {name: proc for name, proc in rec.processes.items() if is_gateway_process(proc)}
    changes: list[str] = []
    for name in sorted(set(current) - set(desired)):
        instance, _, namespace = name.partition(".")
        namespace = namespace or "default"
        _delete(client, f"registry/endpoints/{namespace}/{instance}")
        _delete(client, f"registry/services/{namespace}/{instance.removesuffix('-0')}")
        stop([current[name]])
        del rec.processes[name]
        launcher.release_credentials([name])
        changes.append(f"{name} removed")
    launcher.save()
    taken = {slot for name, proc in rec.processes.items() if name in desired and is_gateway_process(proc)
             and (slot := _slot(proc, rec.base_port)) is not None}
    started: list[tuple[GatewayProxy, int]] = []
    for name, proxy in sorted(desired.items()):
        recorded = rec.processes.get(name)
        if recorded is not None and recorded.alive():
            # registered again: a changed Gateway (another first listener) changes its Service's port
            _register(client, proxy, ports(rec.base_port, _slot(recorded, rec.base_port) or 0)[0])
            continue
        slot = _slot(recorded, rec.base_port) if recorded is not None else None
        if slot is None:
            slot = next((k for k in range(MAX_GATEWAYS) if k not in taken), None)
            if slot is None:
                raise MeshError(f"Gateway {proxy.namespace}/{proxy.gateway}: the local mesh runs at most "
                                f"{MAX_GATEWAYS} Gateways with their own proxy")
        taken.add(slot)
        _start(launcher, client, proxy, slot)
        started.append((proxy, slot))
        changes.append(f"{name} started")
    for proxy, slot in started:
        ready = f"http://127.0.0.1:{ports(rec.base_port, slot)[1]}/healthz/ready"
        launcher.wait(functools.partial(readiness.all_synced, client, [proxy.proxy_id]), deadline,
                      f"the gateway proxy {proxy.process} to ACK its snapshot", proxy.process)
        launcher.wait(functools.partial(readiness.http_ok, ready), deadline,
                      f"the gateway proxy {proxy.process} to be ready", proxy.process)
    return changes


def _register(client: ControlClient, proxy: GatewayProxy, listener: int) -> None:
    client.request("POST", "registry/services",
                   json_body={"name": proxy.service, "namespace": proxy.namespace, "port": proxy.port})
    client.request("POST", "registry/endpoints", json_body={
        "instance": proxy.instance, "workload": proxy.service, "service": proxy.service,
        "namespace": proxy.namespace, "address": "127.0.0.1", "port": listener, "labels": dict(proxy.labels),
        "service_account": proxy.service, "has_sidecar": False, "healthy": True,
    })


def _start(launcher: Launcher, client: ControlClient, proxy: GatewayProxy, slot: int) -> None:
    listener, admin = ports(launcher.rec.base_port, slot)
    busy = busy_ports([listener, admin])
    if busy:
        raise MeshError(f"cannot start the gateway proxy {proxy.process}: port(s) "
                        f"{', '.join(map(str, busy))} are in use")
    identity = spiffe_identity(proxy.namespace, proxy.service)  # Istio: sa/<name>-istio
    token = launcher.issue_tokens([identity], revoke_earlier=False)[identity]
    token_file = launcher.credential(proxy.process, token)
    # registered before it starts: its first snapshot already has the Gateway's labels and routes
    _register(client, proxy, listener)
    launcher.spawn(proxy.process, python_argv(
        "meshkit.proxy", "--control", launcher.control_url, "--id", proxy.proxy_id,
        "--kind", "gateway", "--outbound-port", str(listener), "--inbound-port", "0",
        "--admin-port", str(admin), "--access-log", str(launcher.state.log(f"{proxy.process}.access")),
        "--ca-token-file", str(token_file),
    ), env=sidecar_env())
