"""A pod's mounted ConfigMaps and Secrets as files, for the apps that read files (the ``nginx`` image).

Istio's nginx tasks mount ``nginx-configmap`` at ``/etc/nginx`` and Secrets at
``/etc/nginx-server-certs``...: every key of the ConfigMap/Secret becomes a file under the
``mountPath`` (``items`` pick keys and name their paths; ``subPath`` mounts one key as the path
itself), as the kubelet writes them. `pod_files` gives those files (pod path -> text) for one
Deployment, with the problems that would keep a kubelet from starting the pod (a volume a mount
names that the pod does not declare, a ConfigMap or Secret that does not exist and is not
``optional``), each naming the Deployment's field. The local runtime writes the files under the
pod's own directory and the app maps its absolute paths there.

`tls_ports` is what Istio's protocol sniffing would find on a Service port with no name: the
ports on which the pods' ``nginx.conf`` listens with ``ssl`` (their sidecar then carries those
bytes as opaque TCP, `tls_routes.inbound_protocol`).

Only the apps in `FILE_APPS` read files; other Deployments' volumes stay without effect
(`workloads.LOCAL_NO_EFFECT`). Pure data: no files are written here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any

from meshkit.config.meshconfig import ConfigMap
from meshkit.config.resources import Resource
from meshkit.config.secrets import Secret
from meshkit.config.workloads import Deployment, sample_app

FILE_APPS = frozenset({"nginx"})  # apps that read their pod's mounted files
NGINX_CONF = "/etc/nginx/nginx.conf"
_LISTEN = re.compile(r"(?:^|[;{}\s])listen\s+([^;{}]*);")
_COMMENT = re.compile(r"#[^\n]*")


def _text(value: str, binary: bool) -> str:
    return base64.b64decode(value).decode("utf-8", errors="replace") if binary else value


def _source(volume: Mapping[str, Any], namespace: str, resources: Sequence[Resource]
            ) -> tuple[str, str, dict[str, str] | None, bool]:
    """(kind, name, its files by key or None when missing, optional) of one pod volume."""
    if isinstance(volume.get("configMap"), dict):
        ref = volume["configMap"]
        name = str(ref.get("name", ""))
        found = next((r for r in resources if isinstance(r, ConfigMap) and r.metadata.name == name
                      and r.metadata.namespace == namespace), None)
        files = None
        if found is not None:
            files = dict(found.data or {})
            files.update({k: _text(v, True) for k, v in (found.binary_data or {}).items()})
        return "ConfigMap", name, files, bool(ref.get("optional"))
    if isinstance(volume.get("secret"), dict):
        ref = volume["secret"]
        name = str(ref.get("secretName", ""))
        secret = next((r for r in resources if isinstance(r, Secret) and r.metadata.name == name
                       and r.metadata.namespace == namespace), None)
        return "Secret", name, secret.values() if secret is not None else None, bool(ref.get("optional"))
    return "", "", {}, True  # emptyDir, hostPath...: an empty directory on the local mesh


def _items(files: Mapping[str, str], volume: Mapping[str, Any], kind: str) -> dict[str, str]:
    ref = volume.get("configMap" if kind == "ConfigMap" else "secret") or {}
    items = ref.get("items")
    if not isinstance(items, list):
        return dict(files)
    return {str(i.get("path")): files[str(i.get("key"))] for i in items
            if isinstance(i, dict) and str(i.get("key")) in files}


def volume_files(volume: Mapping[str, Any], namespace: str, resources: Sequence[Resource]
                 ) -> dict[str, str] | None:
    """The files of one ConfigMap or Secret volume by key (``items`` applied); None when it is missing
    (the proxy's user volumes: `meshkit.config.user_volumes`)."""
    kind, _, found, _ = _source(volume, namespace, resources)
    return None if found is None else _items(found, volume, kind)


def pod_files(deployment: Deployment, resources: Sequence[Resource]) -> tuple[dict[str, str], list[str]]:
    """The files the first container of ``deployment`` sees from its ConfigMap and Secret volumes
    (absolute pod path -> text), and what keeps the pod from starting (each naming its field)."""
    spec = deployment.spec.template.spec
    namespace = deployment.metadata.namespace
    volumes = {str(v.get("name")): v for v in (spec.volumes or []) if isinstance(v, dict)}
    files: dict[str, str] = {}
    problems: list[str] = []
    for index, mount in enumerate(spec.containers[0].volume_mounts or []):
        where = f"{deployment.ref} spec.template.spec.containers[0].volumeMounts[{index}]"
        if not isinstance(mount, dict) or not isinstance(mount.get("mountPath"), str):
            problems.append(f"{where}: needs a name and a mountPath")
            continue
        volume = volumes.get(str(mount.get("name")))
        if volume is None:
            problems.append(f'{where}.name: no volume "{mount.get("name")}" in spec.template.spec.volumes')
            continue
        kind, name, found, optional = _source(volume, namespace, resources)
        if found is None:
            if not optional:
                problems.append(f'{where}: {kind} "{name}" not found in namespace {namespace} (create it '
                                f"first: the pod cannot start without it)")
            continue
        chosen = _items(found, volume, kind)
        base = mount["mountPath"].rstrip("/")
        sub = mount.get("subPath")
        if isinstance(sub, str) and sub:
            if sub in chosen:
                files[base or "/"] = chosen[sub]
            continue
        for key, text in chosen.items():
            files[f"{base}/{key}"] = text
    return dict(sorted(files.items())), problems


def nginx_tls_ports(conf: str) -> set[int]:
    """The ports an nginx.conf's ``listen`` directives open with ``ssl``."""
    ports: set[int] = set()
    for found in _LISTEN.finditer(_COMMENT.sub("", conf)):
        args = found.group(1).split()
        if args and "ssl" in args[1:]:
            port = args[0].rsplit(":", 1)[-1]
            if port.isdigit():
                ports.add(int(port))
    return ports


def tls_ports(resources: Sequence[Resource], namespace: str, selector: Mapping[str, str] | None) -> set[int]:
    """The container ports on which the pods ``selector`` selects in ``namespace`` serve TLS themselves
    (an ``nginx`` whose mounted nginx.conf listens with ``ssl``)."""
    ports: set[int] = set()
    if not selector:
        return ports
    for deployment in resources:
        if not isinstance(deployment, Deployment) or deployment.metadata.namespace != namespace:
            continue
        labels = deployment.pod_labels
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        if sample_app(deployment.spec.template.spec.containers[0].image) not in FILE_APPS:
            continue
        files, _ = pod_files(deployment, resources)
        ports |= nginx_tls_ports(files.get(NGINX_CONF, ""))
    return ports
