"""kubectl-like tables for the Kubernetes kinds and the local mesh's pods (`meshkit get pods|deploy|...`).

Only formatting: the rows come from the control plane's store (the objects) and from the local
mesh's record (the instances, i.e. pods). Nothing here changes anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshkit.cli.common import age
from meshkit.config.ip_ranges import cluster_ip

if TYPE_CHECKING:
    from meshkit.runtime.local import LocalMesh

POD_KINDS = frozenset({"pods", "pod", "po"})

Row = Callable[[dict[str, Any], dict[str, Any]], list[str]]  # (store item, context) -> cells


def _ports(spec: dict[str, Any]) -> str:
    return ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", [])) or "<none>"


def _deployment(item: dict[str, Any], context: dict[str, Any]) -> list[str]:
    resource = item["resource"]
    wanted = int((resource.get("spec") or {}).get("replicas", 1))
    ready = context.get("ready", {}).get(resource["metadata"]["name"], 0)
    return [f"{ready}/{wanted}", str(wanted), str(ready)]


def _service(item: dict[str, Any], _context: dict[str, Any]) -> list[str]:
    spec = item["resource"].get("spec") or {}
    meta = item["resource"].get("metadata") or {}
    # the local mesh's notional address plan (docs/local-mesh.md): kind's service range 10.96.0.0/16
    address = spec.get("clusterIP") or str(cluster_ip(str(meta.get("name", "")),
                                                      str(meta.get("namespace") or "default")))
    return [spec.get("type", "ClusterIP"), address, "<none>", _ports(spec)]


def _account(item: dict[str, Any], _context: dict[str, Any]) -> list[str]:
    return [str(len(item["resource"].get("secrets") or []))]


def _namespace(item: dict[str, Any], _context: dict[str, Any]) -> list[str]:
    return ["Active", ",".join(f"{k}={v}" for k, v in sorted((item["resource"]["metadata"].get("labels") or
                                                              {}).items())) or "<none>"]


def _gateway(item: dict[str, Any], _context: dict[str, Any]) -> list[str]:
    servers = (item["resource"].get("spec") or {}).get("servers", [])
    return [json.dumps(sorted({h for s in servers for h in s.get("hosts", [])}))]


def _network_policy(item: dict[str, Any], _context: dict[str, Any]) -> list[str]:
    """kubectl's POD-SELECTOR: the podSelector as a label selector string, ``<none>`` for ``{}``."""
    selector = (item["resource"].get("spec") or {}).get("podSelector") or {}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        values = ",".join(expression.get("values") or [])
        operator = {"In": "in", "NotIn": "notin"}.get(expression["operator"])
        parts.append(f"{expression['key']} {operator} ({values})" if operator else
                     ("" if expression["operator"] == "Exists" else "!") + expression["key"])
    return [",".join(parts) or "<none>"]


WIDE: dict[str, tuple[list[str], Row]] = {
    "Deployment": (["READY", "UP-TO-DATE", "AVAILABLE"], _deployment),
    "Service": (["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"], _service),
    "ServiceAccount": (["SECRETS"], _account),
    "Namespace": (["STATUS", "LABELS"], _namespace),
    "Gateway": (["HOSTS"], _gateway),
    "NetworkPolicy": (["POD-SELECTOR"], _network_policy),
}


def ready_by_deployment(mesh: LocalMesh | None) -> dict[str, int]:
    """Running instances per Deployment of the local mesh (app and sidecar alive)."""
    counts: dict[str, int] = {}
    if mesh is None:
        return counts
    for inst in mesh.instances():
        if inst.spec.deployment and inst.status()["healthy"]:
            counts[inst.spec.deployment] = counts.get(inst.spec.deployment, 0) + 1
    rec = mesh.record()
    gateway = rec.processes.get("ingressgateway") if rec is not None else None
    if gateway is not None and gateway.alive():  # an applied istio-ingressgateway Deployment is its pod
        counts["istio-ingressgateway"] = counts.get("istio-ingressgateway", 0) + 1
    return counts


def parse_selector(text: str | None) -> dict[str, str]:
    """kubectl's ``-l key=value[,key=value]`` (equality only); ValueError naming the bad term."""
    found: dict[str, str] = {}
    for term in (text or "").split(","):
        if not term.strip():
            continue
        key, eq, value = term.partition("=")
        valid = re.fullmatch(r"[\w./-]+", key.strip()) and re.fullmatch(r"[\w.-]*", value.strip())
        if not eq or not valid:
            raise ValueError(f"-l {text}: {term!r} is not key=value (only equality selectors)")
        found[key.strip()] = value.strip()
    return found


def pod_list(mesh: LocalMesh, namespace: str | None, selector: dict[str, str]) -> dict[str, Any]:
    """The instances as kubectl's Pod List (name, namespace, labels, container names), those carrying
    ``selector``'s labels: what ``kubectl get pod -l app=sleep -o jsonpath={.items..metadata.name}`` reads."""
    items = []
    for inst in mesh.instances():
        labels = inst.spec.labels
        if (namespace is not None and inst.namespace != namespace) or any(
                labels.get(k) != v for k, v in selector.items()):
            continue
        # containers: the app's (named by its app label, as Istio's samples name them) and the sidecar
        containers = [{"name": labels.get("app", inst.spec.workload)}] + \
            ([{"name": "istio-proxy"}] if inst.spec.sidecar else [])
        items.append({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": inst.pod, "namespace": inst.namespace, "labels": dict(labels)},
                      "spec": {"containers": containers}})
    return {"apiVersion": "v1", "kind": "List", "items": items}


def pod_rows(mesh: LocalMesh, namespace: str | None) -> list[list[str]]:
    """NAMESPACE (with -A), NAME, READY (2/2 with the sidecar), STATUS, RESTARTS, AGE of every instance."""
    from meshkit.runtime import egressgw, kube_gateways  # noqa: PLC0415
    from meshkit.runtime.launch import INGRESS_ID, INGRESS_NAMESPACE  # noqa: PLC0415
    rec = mesh.record()
    if rec is None:
        return []
    pods: list[tuple[str, str, list[Any]]] = []
    for inst in mesh.instances(rec):
        processes = [inst.app] + ([inst.sidecar] if inst.spec.sidecar else [])
        pods.append((inst.namespace, inst.pod, processes))  # kubectl's pod name: in its namespace
    gateway = rec.processes.get("ingressgateway")
    if gateway is not None:
        pods.append((INGRESS_NAMESPACE, INGRESS_ID, [gateway]))
    egress = rec.processes.get(egressgw.PROCESS)  # when deployed (`meshkit deploy egressgateway`)
    if egress is not None:
        pods.append((egressgw.NAMESPACE, egressgw.INSTANCE, [egress]))
    for name, proc in sorted(rec.processes.items()):  # Gateways' own proxies (kube_gateways)
        if kube_gateways.is_gateway_process(proc):
            pod, _, ns = name.partition(".")
            pods.append((ns or "default", pod, [proc]))
    rows = []
    for ns, name, processes in pods:
        if namespace is not None and ns != namespace:
            continue
        alive = sum(1 for p in processes if p is not None and p.alive())
        started = [p.started_at() for p in processes if p is not None]
        since = min((s for s in started if s is not None), default=None)
        status = "Running" if alive == len(processes) else "Error"
        rows.append(([ns] if namespace is None else []) +
                    [name, f"{alive}/{len(processes)}", status, "0", age(since)])
    return rows
