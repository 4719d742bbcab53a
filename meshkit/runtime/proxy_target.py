"""Which proxy an istioctl pod argument names on the local mesh, and its admin port.

`istioctl proxy-config` takes ``pod-name[.namespace]``, ``-n NS`` and ``deploy/NAME``; here those name a
workload instance (found as `meshkit exec` finds it: `meshkit.runtime.curl.find_source`) or one of the
mesh's gateway proxies: ``istio-ingressgateway`` and ``istio-egressgateway`` (in ``istio-system``) and a
Gateway API Gateway's ``<name>-istio`` proxy. `admin_of` returns the name and the admin port.

It must not read a proxy's pages nor print.
"""

from __future__ import annotations

from typing import Any

from meshkit.runtime import egressgw, kube_gateways
from meshkit.runtime.curl import CurlError, find_source
from meshkit.runtime.record import MeshRecord

KINDS = ("deploy", "deployment", "deployments", "deployment.apps", "pod", "pods", "po")
# the mesh's own gateways: process name -> the pod/deployment names Istio gives them (istio-system)
MESH_GATEWAYS = {"ingressgateway": ("istio-ingressgateway", "istio-ingressgateway-0", "ingressgateway"),
                 egressgw.PROCESS: (egressgw.SERVICE, egressgw.INSTANCE, egressgw.PROCESS)}


class TargetError(LookupError):
    """No proxy of that name, in istioctl's words."""


def _admin_port(argv: list[str]) -> int | None:
    if "--admin-port" in argv[:-1]:
        value = argv[argv.index("--admin-port") + 1]
        return int(value) if value.isdigit() else None
    return None


def _gateway(rec: MeshRecord, name: str, namespace: str | None) -> tuple[str, int] | None:
    """A gateway proxy of the mesh named ``name`` (in ``namespace``, when given)."""
    for process, proc in rec.processes.items():
        names: tuple[str, ...] = ()
        home = "istio-system"
        if process in MESH_GATEWAYS:
            names = MESH_GATEWAYS[process]
        elif kube_gateways.is_gateway_process(proc):
            pod, _, home = process.partition(".")
            home = home or "default"
            names = (pod, pod.removesuffix("-0"))
        if name in names and namespace in (None, home):
            port = _admin_port(list(proc.argv))
            if port is not None and proc.alive():
                return f"{names[0]}.{home}", port
    return None


def admin_of(rec: MeshRecord, workloads: list[dict[str, Any]], target: str,
             namespace: str | None = None) -> tuple[str, int]:
    """(proxy name, admin port) of ``target`` (``reviews-v1-0``, ``reviews-v1-0.default``,
    ``deploy/reviews-v1``, ``deploy/istio-egressgateway`` with ``namespace`` istio-system)."""
    kind, slash, name = target.rpartition("/")
    if slash and kind not in KINDS:
        raise TargetError(f"unsupported resource type {kind!r} in {target!r}: use pod-name[.namespace] "
                          "or deploy/NAME")
    what = "deployments.apps" if kind.startswith("deploy") else "pods"
    if "." in name:
        name, _, namespace = name.partition(".")
    gateway = _gateway(rec, name, namespace)
    if gateway is not None:
        return gateway
    wanted = name if namespace in (None, "default") else f"{name}.{namespace}"
    try:
        row = find_source(workloads, wanted)
    except CurlError:
        known = sorted([w["name"] if (w.get("namespace") or "default") == "default"
                        else f"{w['name']}.{w['namespace']}" for w in workloads]
                       + [f"{names[0]}.istio-system" for process, names in MESH_GATEWAYS.items()
                          if process in rec.processes])
        raise TargetError(f'{what} "{name}" not found in namespace "{namespace or "default"}" '
                          f"(known: {', '.join(known) or 'none'})") from None
    if not row.get("admin_port"):
        raise TargetError(f"{row['name']} has no sidecar (istio-proxy container): it runs outside the mesh")
    return (row["name"] if (row.get("namespace") or "default") == "default"
            else f"{row['name']}.{row['namespace']}"), int(row["admin_port"])
