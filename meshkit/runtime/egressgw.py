"""The local mesh's egress gateway (``istio-egressgateway``), started only when asked.

`meshkit deploy egressgateway` runs a gateway proxy labelled ``istio: egressgateway`` in ``istio-system``
(as istioctl's demo profile, ``components.egressGateways[0].enabled=true``) and registers it as the service
``istio-egressgateway.istio-system.svc.cluster.local`` port 80, so Istio's "Egress Gateways" task routes
sidecars to it and it routes on to the external hosts (the stand-ins, `meshkit deploy external`). Its
access log is ``egressgateway.access`` (`meshkit logs egressgateway --access`). Sidecars reach it in plain
HTTP, as in the task's HTTP part. This module starts and registers it; it must not compile config.
"""

from __future__ import annotations

import functools
import time

from meshkit.control.ca import spiffe_identity
from meshkit.runtime import readiness
from meshkit.runtime.launch import Launcher, MeshError, sidecar_env
from meshkit.runtime.ports import busy_ports
from meshkit.runtime.processes import python_argv
from meshkit.runtime.record import MeshRecord
from meshkit.runtime.state import StateDir

PROCESS = "egressgateway"  # the process and log name (`meshkit logs egressgateway --access`)
APP_SET = "egressgateway"  # `meshkit deploy egressgateway`
INSTANCE = "istio-egressgateway-0"
NAMESPACE = "istio-system"
SERVICE = "istio-egressgateway"
SERVICE_PORT = 80  # Istio's egress gateway Service port for HTTP
SERVICE_ACCOUNT = "istio-egressgateway-service-account"
PROXY_ID = f"{INSTANCE}.{NAMESPACE}"  # its node: labels app/istio from the id (control.registry.node_for)
LABELS = {"app": SERVICE, "istio": "egressgateway"}
HTTP_OFFSET = 82  # in the mesh's block 0, beside the ingress gateway's +80
ADMIN_OFFSET = 2


def ports(base: int) -> tuple[int, int]:
    """(HTTP listener, admin) of the egress gateway of the mesh at port ``base``."""
    return base + HTTP_OFFSET, base + ADMIN_OFFSET


def running(rec: MeshRecord) -> bool:
    proc = rec.processes.get(PROCESS)
    return proc is not None and proc.alive()


def deploy(state: StateDir, rec: MeshRecord, *, timeout: float = 60.0) -> None:
    """Start the egress gateway (if it is not running), register it, wait until it has its snapshot."""
    if running(rec):
        return
    http, admin = ports(rec.base_port)
    busy = busy_ports([http, admin])
    if busy:
        raise MeshError(f"cannot start the egress gateway: port(s) {', '.join(map(str, busy))} are in use")
    launcher = Launcher(state, rec)
    client = launcher.client(timeout=10.0)
    if not readiness.control_answers(client):
        raise MeshError(f"the mesh's control plane at {launcher.control_url} does not answer")
    deadline = time.monotonic() + timeout
    identity = spiffe_identity(NAMESPACE, SERVICE_ACCOUNT)
    token = launcher.issue_tokens([identity], revoke_earlier=False)[identity]
    token_file = launcher.credential(PROCESS, token)
    launcher.spawn(PROCESS, python_argv(
        "meshkit.proxy", "--control", launcher.control_url, "--id", PROXY_ID,
        "--kind", "gateway", "--outbound-port", str(http), "--inbound-port", "0",
        "--admin-port", str(admin), "--access-log", str(state.log(f"{PROCESS}.access")),
        "--ca-token-file", str(token_file),
    ), env=sidecar_env())
    client.request("POST", "registry/services",
                   json_body={"name": SERVICE, "namespace": NAMESPACE, "port": SERVICE_PORT})
    client.request("POST", "registry/endpoints", json_body={
        "instance": INSTANCE, "workload": SERVICE, "service": SERVICE, "namespace": NAMESPACE,
        "address": "127.0.0.1", "port": http, "labels": LABELS, "service_account": SERVICE_ACCOUNT,
        "has_sidecar": False, "healthy": True,  # a gateway listener speaks plain HTTP (the task's HTTP part)
    })
    launcher.wait(lambda: readiness.all_synced(client, [PROXY_ID]), deadline,
                  "the egress gateway to ACK its snapshot", PROCESS)
    launcher.wait(functools.partial(readiness.http_ok, f"http://127.0.0.1:{admin}/healthz/ready"), deadline,
                  "the egress gateway to be ready", PROCESS)
