"""The local mesh's kubelet for volumes: a pod's mounted ConfigMaps and Secrets written as files.

For the apps that read files (`meshkit.config.volumes.FILE_APPS`: the ``nginx`` image), every
Deployment's volumes (`volumes.pod_files`) are written under ``<state dir>/pods/<namespace>/
<deployment>/`` with their pod paths (``etc/nginx/nginx.conf``, ``etc/nginx-server-certs/tls.crt``),
owner-only (Secrets hold private keys); the app gets that directory as ``--root``. A volume that
cannot be mounted (a missing ConfigMap or Secret) is reported per Deployment (`volumes_of`): the
runtime refuses to start such a pod (a kubelet would leave it pending) and keeps a running one as
it is (deleting a mounted ConfigMap does not stop a pod).

It must not start processes or talk to the control plane.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from meshkit.config.resources import Resource
from meshkit.config.volumes import FILE_APPS, pod_files
from meshkit.config.workloads import Deployment, sample_app
from meshkit.runtime.state import StateDir

__all__ = ["FILE_APPS", "PodVolumeError", "digest", "pod_dir", "volumes_of", "write"]


class PodVolumeError(ValueError):
    """A volume the pod cannot mount (the message names the Deployment's field)."""


def pod_dir(state: StateDir, namespace: str, deployment: str) -> Path:
    return state.root / "pods" / namespace / deployment


PodKey = tuple[str, str]  # (namespace, deployment)


def volumes_of(resources: Sequence[Resource]) -> tuple[dict[PodKey, dict[str, str]], dict[PodKey, list[str]]]:
    """For every Deployment of an app that reads files: its pod files, or what keeps them from being
    mounted (each naming the Deployment's field)."""
    found: dict[PodKey, dict[str, str]] = {}
    problems: dict[PodKey, list[str]] = {}
    for resource in resources:
        if not isinstance(resource, Deployment):
            continue
        if sample_app(resource.spec.template.spec.containers[0].image) not in FILE_APPS:
            continue
        files, wrong = pod_files(resource, resources)
        key = (resource.metadata.namespace, resource.metadata.name)
        if wrong:
            problems[key] = wrong
        else:
            found[key] = files
    return found, problems


def digest(files: Mapping[str, str]) -> str:
    hashed = hashlib.sha256()
    for path, text in sorted(files.items()):
        hashed.update(f"{len(path)}:{path}{len(text)}:{text}".encode())
    return hashed.hexdigest()[:16]


def write(state: StateDir, volumes: Mapping[tuple[str, str], Mapping[str, str]]) -> None:
    """Each pod's files under its directory (replacing what was there), readable by the owner only."""
    for (namespace, deployment), files in volumes.items():
        root = pod_dir(state, namespace, deployment)
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, mode=0o700)
        for path, text in files.items():
            target = root / path.lstrip("/")
            if root.resolve() not in target.resolve().parents:
                raise PodVolumeError(f"Deployment/{namespace}/{deployment}: mount path {path} leaves the pod")
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
