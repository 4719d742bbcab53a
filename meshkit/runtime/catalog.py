"""What an app set consists of: the workloads `meshkit up --app NAME` starts, as data.

Names, versions, service accounts and service ports follow Istio's samples (Bookinfo on
9080 with the ``bookinfo-*`` service accounts, httpbin on 8000), so Istio's YAML applies
unchanged.

Istio's sample images map to the built-in apps in `meshkit.config.workloads.SAMPLE_IMAGES`; a
Deployment's container ``args`` travel in `WorkloadSpec.args`, and `app_args` turns them into the
app's options. The one app that reads them is ``tcp-echo`` (``docker.io/istio/tcp-echo-server``,
any tag; `meshkit.apps.tcp_echo`): ``args: ["9000,9001,9002", "one"]`` makes it answer
``one <line>``. The first arg lists the ports the sample listens on; on the local mesh the
instance listens on its one app port (+80 of its block) and the mesh registers the Service's
first port, 9000 (name ``tcp``): that is the port the sidecar's inbound listener and the gateway's
routes lead to. A client's sidecar sends 9001 (``tcp-other``, a declared port: its default ``tcp``
route) and 9002 (undeclared: ``PassthroughCluster`` under ALLOW_ANY, to where the name resolves)
to that same instance, which answers them as the sample's server does on every port. ``TCP_APPS``
speak no HTTP: readiness is a TCP connect to the app port (`meshkit.runtime.readiness.tcp_open`),
never an HTTP GET.

The ``nginx`` image (`meshkit.apps.nginx`) serves the server of its mounted nginx.conf that listens
on the container's port (``listen_port``); its ConfigMap and Secret volumes are written under the
pod's directory (``pods/<namespace>/<deployment>`` of the state dir, `meshkit.runtime.manifests`),
whose content digest (``volumes_digest``) is part of the spec, so a changed Secret replaces the pod.
It may speak TLS on its port, so its readiness is a TCP connect too (``TCP_READY_APPS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True)
class WorkloadSpec:
    """One Deployment-like workload: ``replicas`` instances of ``app`` at ``version``."""

    app: str  # the demo app to run (meshkit.apps): "productpage", "reviews", ...
    version: str  # "v1"
    service: str  # the Service it backs
    service_port: int  # the port in URLs: http://reviews:9080/
    service_account: str
    sidecar: bool = True
    replicas: int = 1
    deployment: str | None = None  # from a Deployment manifest: its name (else service-version)
    pod_labels: tuple[tuple[str, str], ...] = ()  # from a Deployment manifest: its pod template's labels
    namespace: str = "default"
    args: tuple[str, ...] = ()  # from a Deployment manifest: its container's args
    listen_port: int | None = None  # from a Deployment manifest: its container's port (nginx's server)
    volumes_digest: str = ""  # the mounted files' digest (apps that read files: nginx)
    concurrency: int = 1  # its sidecar's worker processes (proxy.istio.io/config "concurrency")
    # from a Deployment manifest: its pod's include/excludeOutboundIPRanges annotations (name, value)
    ip_ranges: tuple[tuple[str, str], ...] = ()

    @property
    def workload(self) -> str:
        """Istio's workload name (the Deployment): ``reviews-v1``."""
        return self.deployment or f"{self.service}-{self.version}"

    @property
    def qualified(self) -> str:
        """How `meshkit scale` names it: ``reviews-v1`` in ``default``, ``httpbin.foo`` elsewhere."""
        return self.workload if self.namespace == "default" else f"{self.workload}.{self.namespace}"

    def instances(self) -> list[str]:
        """Pod-like instance names: ``reviews-v1-0``, ``reviews-v1-1``, ...; outside namespace ``default``
        the namespace follows a dot (``httpbin-0.foo``), which is also the sidecar's proxy id."""
        suffix = "" if self.namespace == "default" else f".{self.namespace}"
        return [f"{self.workload}-{i}{suffix}" for i in range(self.replicas)]

    @property
    def labels(self) -> dict[str, str]:
        if self.pod_labels:
            return dict(self.pod_labels)
        return {"app": self.service, "version": self.version}

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "pod_labels": [list(pair) for pair in self.pod_labels],
                "args": list(self.args), "ip_ranges": [list(pair) for pair in self.ip_ranges]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkloadSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["pod_labels"] = tuple((str(k), str(v)) for k, v in values.get("pod_labels", ()))
        values["args"] = tuple(str(a) for a in values.get("args", ()))
        values["ip_ranges"] = tuple((str(k), str(v)) for k, v in values.get("ip_ranges", ()))
        return cls(**values)


BOOKINFO: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("productpage", "v1", "productpage", 9080, "bookinfo-productpage"),
    WorkloadSpec("details", "v1", "details", 9080, "bookinfo-details"),
    WorkloadSpec("reviews", "v1", "reviews", 9080, "bookinfo-reviews"),
    WorkloadSpec("reviews", "v2", "reviews", 9080, "bookinfo-reviews"),
    WorkloadSpec("reviews", "v3", "reviews", 9080, "bookinfo-reviews"),
    WorkloadSpec("ratings", "v1", "ratings", 9080, "bookinfo-ratings"),
)

# Istio's mirroring task runs two versions of httpbin and mirrors v1's traffic to v2.
HTTPBIN: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("httpbin", "v1", "httpbin", 8000, "httpbin"),
    WorkloadSpec("httpbin", "v2", "httpbin", 8000, "httpbin"),
)

# Clients for the security lessons, as in Istio's samples: `sleep` in the mesh (service port 80)
# and `legacy`, a client with no sidecar whose plaintext a STRICT PeerAuthentication refuses.
CLIENTS: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("sleep", "v1", "sleep", 80, "sleep"),
    WorkloadSpec("legacy", "v1", "legacy", 80, "legacy", sidecar=False),
)

# Stand-ins for the external hosts of Istio's egress tasks (httpbin.org, edition.cnn.com, www.google.com),
# outside the mesh (no sidecar, not in the registry): the sidecars reach them through the control plane's
# external host map (`external_hosts`), as if DNS had resolved those names to them.
EXTERNAL: tuple[WorkloadSpec, ...] = (
    WorkloadSpec("external", "v1", "external", 80, "external", sidecar=False),
)
EXTERNAL_HOSTS = ("httpbin.org", "edition.cnn.com", "www.google.com")


# Apps that speak plain TCP, no HTTP: no /healthz, so readiness is a TCP connect to the app port.
TCP_APPS = frozenset({"tcp-echo"})
TCP_READY_APPS = TCP_APPS | {"nginx"}  # no /healthz: readiness is a TCP connect
# Servers that are registered even without a sidecar (their Service's endpoint is the app's own port, as
# a pod outside the mesh: Istio's mesh-external nginx of "Egress TLS Origination", tcp-echo in a namespace
# without injection, which a sidecar's `nc tcp-echo.NS 9000` reaches in plaintext). The other apps
# without a sidecar are the out-of-mesh clients (legacy), which serve nothing.
SERVES_WITHOUT_SIDECAR = frozenset({"nginx", "tcp-echo"})


def registered(spec: WorkloadSpec) -> bool:
    """Is an instance of ``spec`` an endpoint of its Service (through its sidecar, or its app directly)?"""
    return spec.sidecar or spec.app in SERVES_WITHOUT_SIDECAR
TCP_ECHO_PREFIX = "one"  # the prefix when a tcp-echo Deployment gives no second arg


def app_args(spec: WorkloadSpec) -> list[str]:
    """The app's own options from its container's args: tcp-echo's prefix (the second arg; the first,
    the sample's port list, names container ports, and the instance listens on its app port instead)."""
    if spec.app == "tcp-echo":
        return ["--prefix", spec.args[1] if len(spec.args) > 1 else TCP_ECHO_PREFIX]
    if spec.app == "nginx":
        return ["--listen-port", str(spec.listen_port or 80)]
    return []


EXTERNAL_TLS_DELTA = 1  # the stand-ins' HTTPS listens on their app port + 1 (the +81 of the instance's block)


def external_hosts(port: int, tls_port: int | None = None) -> dict[str, str]:
    """The control plane's external host map for stand-ins listening on 127.0.0.1:``port`` (HTTP, port 80)
    and ``tls_port`` (HTTPS, port 443)."""
    hosts = {f"{host}:80": f"127.0.0.1:{port}" for host in EXTERNAL_HOSTS}
    if tls_port is not None:
        hosts.update({f"{host}:443": f"127.0.0.1:{tls_port}" for host in EXTERNAL_HOSTS})
    return dict(sorted(hosts.items()))


# "none": the mesh alone (control plane and ingress gateway), as after `istioctl install`; apps come later
# from manifests (`meshkit apply -f samples/bookinfo/platform/kube/bookinfo.yaml`).
APP_SETS: dict[str, tuple[WorkloadSpec, ...]] = {"bookinfo": BOOKINFO, "httpbin": HTTPBIN, "clients": CLIENTS,
                                                 "external": EXTERNAL, "none": ()}

# App sets whose workloads are Kubernetes manifests (defaults/<set>/: Istio's own sample files, verbatim):
# `up`/`deploy` apply them and the runtime runs what their Deployments say, exactly as for a learner's
# `meshkit apply -f bookinfo.yaml`. Their entry in APP_SETS only names the workloads (for --replicas).
MANIFEST_SETS = frozenset({"bookinfo"})


def resolve(app_sets: list[str], replicas: dict[str, int]) -> list[WorkloadSpec]:
    """The workloads of the named app sets, with replica overrides keyed by workload name.

    Raises ValueError naming the unknown app set or workload.
    """
    specs: list[WorkloadSpec] = []
    for name in app_sets:
        if name not in APP_SETS:
            raise ValueError(f"unknown app {name!r}; choose from {', '.join(sorted(APP_SETS))}")
        specs.extend(APP_SETS[name])
    known = {s.workload for s in specs}
    for workload, count in replicas.items():
        if workload not in known:
            listing = ", ".join(sorted(known))
            raise ValueError(f"--replicas {workload}={count}: no such workload (known: {listing})")
        if not 0 <= count <= 10:
            raise ValueError(f"--replicas {workload}={count}: replicas must be between 0 and 10")
    return [dataclasses.replace(s, replicas=replicas.get(s.workload, s.replicas)) for s in specs]


def workload_of(name: str) -> str:
    """The workload an instance belongs to (``reviews-v1-0`` -> ``reviews-v1``, ``httpbin-0.foo`` ->
    ``httpbin.foo``); any other name stays."""
    pod, dot, namespace = name.partition(".")
    head, _, tail = pod.rpartition("-")
    return (head if head and tail.isdigit() else pod) + dot + namespace


def refers_to(name: str, row: Mapping[str, Any], *, by_service: bool = True) -> bool:
    """Does ``name`` name this `meshkit status` workload row: its instance (``sleep-v1-0``), its
    workload (``sleep-v1``) or, with ``by_service``, its service (``sleep``)?"""
    instance = str(row["name"])
    return name in (instance, workload_of(instance)) or (by_service and name == row.get("service"))


def default_config(app_set: str) -> list[dict[str, Any]]:
    """The config `up` and `deploy` apply with ``app_set``: the files of ``defaults/<set>/`` in name order
    (Bookinfo: Istio's bookinfo.yaml, bookinfo-gateway.yaml and destination-rule-all.yaml, unchanged) or
    ``defaults/<set>.yaml`` (httpbin's subsets); none for the others (clients)."""
    defaults = resources.files("meshkit.runtime").joinpath("defaults")
    folder = defaults.joinpath(app_set)
    if folder.is_dir():
        files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    else:
        files = [f for f in [defaults.joinpath(f"{app_set}.yaml")] if f.is_file()]
    return [doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]


def with_replicas(documents: list[dict[str, Any]], replicas: Mapping[str, int]) -> list[dict[str, Any]]:
    """``documents`` with the ``spec.replicas`` of the named Deployments set (`up --replicas
    reviews-v1=2`)."""
    out = []
    for doc in documents:
        name = (doc.get("metadata") or {}).get("name")
        if doc.get("kind") == "Deployment" and isinstance(name, str) and name in replicas:
            out.append({**doc, "spec": {**doc.get("spec", {}), "replicas": replicas[name]}})
        else:
            out.append(doc)
    return out
