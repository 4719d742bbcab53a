"""Sidecar injection as a pure function: a pod (plain dict) in, JSONPatch operations out.

`inject` decides like Istio's injector: a pod is injected when its namespace carries
``meshkit-injection=enabled``, unless the pod label ``sidecar.meshkit.dev/inject`` says
otherwise ("true" injects even in an unlabelled namespace, "false" opts out of a
labelled one). Injection adds the ``meshkit-proxy`` sidecar (uid 1337), a projected
service-account token for the CA (audience ``meshkit-ca``), and the ``meshkit-init``
container that installs the traffic-capture rules (`meshkit.k8s.iptables`).

The pod's ``proxy.istio.io/config`` annotation (Istio's per-workload ProxyConfig) sets the
sidecar's ``concurrency``: ``--concurrency N`` worker processes (default 1, none passed); one
that is not a ProxyConfig, or a bad ``concurrency``, refuses the pod (``InjectionRefused``, the
webhook's 400 naming the annotation), as Istio's injector does.

The pod gets the ``sidecar.meshkit.dev/status`` annotation, which makes the function
idempotent: an already injected pod yields ``[]``. Nothing here talks to a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from meshkit.config.meshconfig import concurrency
from meshkit.config.proxyconfig import PROXY_CONFIG_ANNOTATION, parse_proxy_config
from meshkit.k8s import names
from meshkit.k8s.iptables import EXCLUDE_ENV

JSONPatch = list[dict[str, Any]]

PROXY_COMMAND = ("python", "-m", "meshkit.proxy")  # the image's python (python:3.11-slim), as the demo apps


class InjectionRefused(ValueError):
    """The pod cannot be injected as it is (a bad ``proxy.istio.io/config``): the webhook refuses it."""


def proxy_concurrency(annotations: dict[str, Any]) -> int:
    """The sidecar's worker processes from the pod's ``proxy.istio.io/config`` (1 without it)."""
    text = annotations.get(PROXY_CONFIG_ANNOTATION)
    if text is None:
        return 1
    try:
        return concurrency(parse_proxy_config(str(text)))
    except ValueError as exc:
        raise InjectionRefused(f"pod annotation {PROXY_CONFIG_ANNOTATION}: {exc}") from None


@dataclass(frozen=True, slots=True)
class InjectSettings:
    """What the injector needs to know that is not in the pod."""

    image: str = names.DEFAULT_IMAGE
    control_address: str = names.DEFAULT_CONTROL_ADDRESS
    image_pull_policy: str = "IfNotPresent"
    proxy_uid: int = names.PROXY_UID
    token_audience: str = names.TOKEN_AUDIENCE
    token_expiration_seconds: int = 3600
    # run the proxy as a native sidecar (an init container with restartPolicy Always, Kubernetes
    # >= 1.29); the operator turns it on when the API server is new enough
    native_sidecar: bool = False
    # where the readiness probe asks /healthz/ready: the sidecar's status port, as Istio's 15021
    health_port: int = names.PORT_HEALTH
    # requests sized for kind; limits keep a runaway sidecar from starving the node
    proxy_resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            "requests": {"cpu": "10m", "memory": "40Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        }
    )
    init_resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"cpu": "100m", "memory": "50Mi"},
        }
    )


def should_inject(pod: dict[str, Any], namespace_labels: dict[str, str] | None) -> bool:
    """The injection decision alone: override label first, then the namespace label.

    ``namespace_labels=None`` means the caller trusts the webhook's selectors, as Istio's
    injector does: the API server only calls the injection webhook for a pod in a namespace
    labelled ``meshkit-injection=enabled`` or labelled ``sidecar.meshkit.dev/inject=true``
    itself, so only the pod's own opt-out is left to check.
    """
    labels = (pod.get("metadata") or {}).get("labels") or {}
    override = str(labels.get(names.INJECT_OVERRIDE_LABEL, "")).lower()
    if override in ("true", "false"):
        return override == "true"
    if namespace_labels is None:
        return True
    return namespace_labels.get(names.INJECTION_LABEL) == names.INJECTION_ENABLED


def is_injected(pod: dict[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return names.STATUS_ANNOTATION in annotations


def inject(pod: dict[str, Any], namespace_labels: dict[str, str] | None,
           settings: InjectSettings) -> JSONPatch:
    """JSONPatch (RFC 6902) operations that inject the sidecar into ``pod``; ``[]`` when nothing to do.

    Host-network pods are never injected (capture rules would hit the node), like Istio.
    ``namespace_labels=None``: the webhook's selectors already chose the pod (`should_inject`).
    """
    spec = pod.get("spec") or {}
    if is_injected(pod) or spec.get("hostNetwork") or not should_inject(pod, namespace_labels):
        return []
    ops: JSONPatch = []
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    init = [init_container(settings, annotations)]
    probers: dict[str, Any] = {}
    if str(annotations.get(REWRITE_PROBES_ANNOTATION, "true")).lower() != "false":
        probe_ops = rewrite_probes(spec, probers)
    else:
        probe_ops = []
    sidecar = sidecar_container(spec, settings, proxy_concurrency(annotations))
    if probers:
        sidecar["env"].append({"name": PROBERS_ENV, "value": json.dumps(probers, sort_keys=True)})
    if settings.native_sidecar:
        # a native sidecar (Kubernetes >= 1.29): an init container that keeps running. Kubelet starts
        # the app only once its startup probe passes (the proxy is ready), and a Job's pod completes
        # when the app exits.
        sidecar["restartPolicy"] = "Always"
        sidecar["startupProbe"] = {"httpGet": {"path": names.READY_PATH, "port": settings.health_port},
                                   "periodSeconds": 1, "failureThreshold": 600}
        ops += _append(spec, "initContainers", [*init, sidecar])
        ops += probe_ops
    else:
        ops += _append(spec, "initContainers", init)
        ops += probe_ops
        ops += _append(spec, "containers", [sidecar])
    ops += _append(spec, "volumes", [token_volume(settings), root_cert_volume()])
    native = [names.SIDECAR_CONTAINER] if settings.native_sidecar else []
    status = {
        "initContainers": [names.INIT_CONTAINER, *native],
        "containers": [] if native else [names.SIDECAR_CONTAINER],
        "volumes": [names.TOKEN_VOLUME, names.ROOT_CERT_VOLUME],
        "image": settings.image,
    }
    annotations = (pod.get("metadata") or {}).get("annotations")
    value = json.dumps(status, sort_keys=True)
    if annotations is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {names.STATUS_ANNOTATION: value}})
    else:
        ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(names.STATUS_ANNOTATION)}",
                    "value": value})
    return ops


REWRITE_PROBES_ANNOTATION = "sidecar.istio.io/rewriteAppHTTPProbers"
PROBERS_ENV = "MESHKIT_APP_PROBERS"  # meshkit.proxy.probes reads it (k8s does not import the proxy)
_PROBES = {"readinessProbe": "readyz", "livenessProbe": "livez", "startupProbe": "startupz"}


def rewrite_probes(pod_spec: dict[str, Any], probers: dict[str, Any]) -> JSONPatch:
    """Point the app containers' ``httpGet``/``tcpSocket`` probes at the sidecar's status port.

    As Istio: ``/app-health/<container>/readyz|livez|startupz`` on 15021, which is not captured,
    so kubelet's plain probe passes STRICT mTLS; the sidecar runs the original probe against
    the app (`meshkit.proxy.probes`), whose spec goes into ``probers`` (path -> probe). Named
    ports are resolved from the container's ports; exec and gRPC probes are left alone.
    """
    ops: JSONPatch = []
    for index, container in enumerate(pod_spec.get("containers") or []):
        named = {str(p.get("name")): p.get("containerPort")
                 for p in container.get("ports") or [] if p.get("name")}
        for field_name, suffix in _PROBES.items():
            probe = container.get(field_name)
            if not isinstance(probe, dict):
                continue
            kind = "httpGet" if "httpGet" in probe else "tcpSocket" if "tcpSocket" in probe else None
            if kind is None:
                continue
            action = dict(probe[kind])
            port = action.get("port")
            if isinstance(port, str):
                port = int(port) if port.isdigit() else named.get(port)
            if not isinstance(port, int):
                continue  # a port name the container does not declare: kubelet would fail it too
            if action.get("host"):
                continue  # probing another host: not the app behind this sidecar
            path = f"/app-health/{container.get('name')}/{suffix}"
            probers[path] = {kind: {**action, "port": port},
                             "timeoutSeconds": int(probe.get("timeoutSeconds") or 1)}
            rewritten = {k: v for k, v in probe.items() if k not in ("httpGet", "tcpSocket")}
            rewritten["httpGet"] = {"path": path, "port": names.PORT_HEALTH, "scheme": "HTTP"}
            where = f"/spec/containers/{index}/{field_name}"
            ops.append({"op": "replace", "path": where, "value": rewritten})
    return ops


def sidecar_container(pod_spec: dict[str, Any], settings: InjectSettings, workers: int = 1) -> dict[str, Any]:
    """The ``meshkit-proxy`` container for a pod with ``pod_spec`` (``workers``: its ``--concurrency``)."""
    return {
        "name": names.SIDECAR_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        # the sidecar module itself, not the `meshkit` CLI: Typer/Click would stay loaded (+4.6 MiB RSS)
        "command": list(PROXY_COMMAND),
        "args": proxy_args(settings, workers),
        "ports": [
            {"name": name, "containerPort": port, "protocol": "TCP"} for name, port in names.SIDECAR_PORTS
        ],
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            _field_env("INSTANCE_IP", "status.podIP"),
            {"name": "MESHKIT_CONTROL", "value": settings.control_address},
            {"name": "MESHKIT_TOKEN_FILE", "value": f"{names.TOKEN_MOUNT_PATH}/{names.TOKEN_FILE}"},
            # the root that signed the control plane's TLS certificate (https:// control address)
            {"name": "MESHKIT_CONTROL_CA", "value": f"{names.ROOT_CERT_MOUNT_PATH}/{names.ROOT_CERT_KEY}"},
            {"name": "MESHKIT_APP_PORTS", "value": ",".join(str(p) for p in app_ports(pod_spec))},
        ],
        "readinessProbe": {
            "httpGet": {"path": names.READY_PATH, "port": settings.health_port},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "resources": settings.proxy_resources,
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_uid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": names.TOKEN_VOLUME, "mountPath": names.TOKEN_MOUNT_PATH, "readOnly": True},
            {"name": names.ROOT_CERT_VOLUME, "mountPath": names.ROOT_CERT_MOUNT_PATH, "readOnly": True},
        ],
    }


def proxy_args(settings: InjectSettings, workers: int = 1) -> list[str]:
    """``python -m meshkit.proxy`` arguments: dynamic mode, listening on all interfaces (captured
    traffic arrives at the pod IP) on the well-known ports the capture rules redirect to; with
    ``workers`` != 1, ``--concurrency`` (the pod's ``proxy.istio.io/config``; 0 = one per CPU)."""
    concurrent = ["--concurrency", str(workers)] if workers != 1 else []
    return [
        "--control", settings.control_address, "--id", "$(POD_NAME).$(POD_NAMESPACE)",
        "--address", "0.0.0.0",
        "--outbound-port", str(names.PORT_OUTBOUND),
        "--inbound-port", str(names.PORT_INBOUND),
        "--admin-port", str(names.PORT_ADMIN),
        "--health-port", str(names.PORT_HEALTH),
        "--capture",
        *concurrent,
    ]


def init_container(settings: InjectSettings, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``meshkit-init`` container: runs the generated capture script, then exits.

    Istio's exclusion annotations of the pod (``traffic.sidecar.istio.io/exclude...``) reach the
    script as environment variables (`meshkit.k8s.iptables.EXCLUDE_ENV`)."""
    env = [{"name": variable, "value": str(annotations[annotation]).replace(" ", "")}
           for annotation, (variable, _, _) in EXCLUDE_ENV.items()
           if annotations and str(annotations.get(annotation) or "").strip()]
    container: dict[str, Any] = {
        "name": names.INIT_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["sh", names.INIT_SCRIPT_PATH],
        "resources": settings.init_resources,
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }
    if env:
        container["env"] = env
    return container


def token_volume(settings: InjectSettings) -> dict[str, Any]:
    """A projected service-account token the sidecar presents to the CA (audience ``meshkit-ca``)."""
    return {
        "name": names.TOKEN_VOLUME,
        "projected": {
            "sources": [{
                "serviceAccountToken": {
                    "audience": settings.token_audience,
                    "expirationSeconds": settings.token_expiration_seconds,
                    "path": names.TOKEN_FILE,
                }
            }]
        },
    }


def root_cert_volume() -> dict[str, Any]:
    """The mesh's root certificate (ConfigMap ``meshkit-ca-root-cert``, published in every namespace
    by `meshkit.k8s.root_cert_publisher`), as Istio mounts ``istio-ca-root-cert``: not optional, so
    kubelet holds the pod until it exists rather than starting a sidecar that cannot verify the
    control plane."""
    return {"name": names.ROOT_CERT_VOLUME, "configMap": {"name": names.ROOT_CONFIGMAP}}


def app_ports(pod_spec: dict[str, Any]) -> list[int]:
    """The container ports the pod's own containers declare (sorted, unique)."""
    ports = {
        int(port["containerPort"])
        for container in pod_spec.get("containers") or []
        for port in container.get("ports") or []
        if "containerPort" in port
    }
    return sorted(ports)


def _append(spec: dict[str, Any], key: str, items: list[dict[str, Any]]) -> JSONPatch:
    """Append to ``/spec/<key>``: one ``add`` of the whole list if absent, else ``/-`` per item.

    Existing init containers keep running first, so their network calls happen before capture.
    """
    if not spec.get(key):
        return [{"op": "add", "path": f"/spec/{key}", "value": items}]
    return [{"op": "add", "path": f"/spec/{key}/-", "value": item} for item in items]


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}


def _escape(key: str) -> str:
    """JSON Pointer escaping (RFC 6901) of one path segment."""
    return key.replace("~", "~0").replace("/", "~1")
