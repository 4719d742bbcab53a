"""Istio's ``sidecar.istio.io/userVolume`` / ``userVolumeMount`` pod annotations: Secret files in the proxy.

On Kubernetes these annotations add volumes to the ``istio-proxy`` container, and a DestinationRule's
``tls.clientCertificate``, ``privateKey`` and ``caCertificates`` name files in them. The local mesh's
proxies have no container, so the files are what the Secret volumes would hold: `proxy_files` maps a path
under a mount (``/etc/client-credential/tls.crt``) to that key of the Secret (the same mapping the nginx
stand-in's mounted volumes use). Both annotations are JSON, in either of Istio's forms: a list of
volumes (``[{"name": "certs", "secret": {"secretName": "client-credential"}}]``) and mounts
(``[{"name": "certs", "mountPath": "/etc/certs"}]``), or a map by name (``{"certs": {"secret": ...}}``).
``secret`` (``secretName``) and ``configMap`` (``name``) volumes are modelled; `check_user_volumes` names
anything else (MK0308) at apply.

Data only: no files are read or written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from meshkit.config import codes
from meshkit.config.messages import Message, Severity
from meshkit.config.resources import Resource
from meshkit.config.volumes import volume_files
from meshkit.config.workloads import Deployment

USER_VOLUME = "sidecar.istio.io/userVolume"
USER_VOLUME_MOUNT = "sidecar.istio.io/userVolumeMount"
FIELD = "spec.template.metadata.annotations"

Files = Callable[[str], str | None]  # a path in the proxy's container -> the file's text, or None


def _by_name(text: str, annotation: str) -> dict[str, dict[str, Any]]:
    """The annotation's entries by name (ValueError naming what is wrong)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{annotation}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                         ) from None
    if isinstance(value, dict):
        entries = [{"name": name, **spec} for name, spec in value.items() if isinstance(spec, dict)]
        if len(entries) != len(value):
            raise ValueError(f"{annotation}: expected a map of objects by name")
    elif isinstance(value, list) and all(isinstance(e, dict) for e in value):
        entries = list(value)
    else:
        raise ValueError(f"{annotation}: expected a JSON list of objects or a map by name")
    found: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{annotation}[{index}].name: expected the volume's name")
        found[name] = entry
    return found


def user_mounts(deployment: Deployment) -> list[tuple[str, dict[str, Any]]]:
    """(mountPath, volume) of the proxy's user volumes (ValueError naming a bad annotation)."""
    annotations = deployment.spec.template.metadata.annotations or {}
    volumes_text, mounts_text = annotations.get(USER_VOLUME), annotations.get(USER_VOLUME_MOUNT)
    if volumes_text is None and mounts_text is None:
        return []
    volumes = _by_name(volumes_text or "[]", USER_VOLUME)
    mounts = _by_name(mounts_text or "[]", USER_VOLUME_MOUNT)
    for name, volume in volumes.items():
        secret, config_map = volume.get("secret"), volume.get("configMap")
        if not (isinstance(secret, dict) and isinstance(secret.get("secretName"), str)) and not (
                isinstance(config_map, dict) and isinstance(config_map.get("name"), str)):
            other = sorted(k for k in volume if k != "name")
            raise ValueError(f"{USER_VOLUME}: volume {name!r} is {', '.join(other) or 'empty'}; only secret "
                             "(secret.secretName) and configMap (configMap.name) volumes are modelled by "
                             "meshkit")
    found: list[tuple[str, dict[str, Any]]] = []
    for name, mount in mounts.items():
        path = mount.get("mountPath")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"{USER_VOLUME_MOUNT}: mount {name!r} needs an absolute mountPath")
        if name not in volumes:
            raise ValueError(f"{USER_VOLUME_MOUNT}: mount {name!r} names no volume of {USER_VOLUME}")
        found.append((path.rstrip("/"), volumes[name]))
    return found


def check_user_volumes(deployment: Deployment) -> list[Message]:
    """MK0308 (Error) for user volume annotations the local mesh cannot mount."""
    try:
        user_mounts(deployment)
    except ValueError as exc:
        return [Message(codes.MK0308, Severity.ERROR, deployment.ref, FIELD, f"{exc}; nothing was applied")]
    return []


def proxy_files(resources: Sequence[Resource], workload: str | None, namespace: str) -> Files:
    """The files the proxy of ``workload`` (its Deployment in ``namespace``) has through its user volumes,
    as the kubelet writes them (`volumes.volume_files`): path -> text, None when no mount has it."""
    files: dict[str, str] = {}
    for resource in resources:
        if (isinstance(resource, Deployment) and resource.metadata.name == workload
                and resource.metadata.namespace == namespace):
            try:
                mounts = user_mounts(resource)
            except ValueError:
                mounts = []  # refused at apply (check_user_volumes)
            for base, volume in mounts:
                found = volume_files(volume, namespace, resources) or {}
                files.update({f"{base}/{key}": text for key, text in found.items()})
            break
    return files.get
