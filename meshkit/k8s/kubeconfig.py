"""Reading a kubeconfig into a `KubeAccess`, fast, for the CLI and notebooks.

What it is for: ``meshkit --context kind ...`` and ``meshkit.connect("kind")`` need the API
server, its CA and the user's credentials from a kubeconfig. The ``kubernetes`` package's
loader does that, but importing it takes seconds (it imports every API model), which every
CLI call would pay. This module reads what kind and most clusters use — a server URL, a CA
(file or data), ``insecure-skip-tls-verify``, a client certificate and key (file or data), a
bearer token (or token file, read again before each request), basic auth — and leaves
anything else (``exec`` and ``auth-provider`` plugins) to the ``kubernetes`` package via
`KubeAccess.from_kubeconfig`.

Files: the ``kubeconfig`` argument, else ``$KUBECONFIG`` (a list joined by ``os.pathsep``,
merged as kubectl merges it: the first file that names a context, cluster or user wins), else
``~/.kube/config``. Problems are `KubeconfigError` naming the file and what is missing.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from meshkit.k8s.api import KubeAccess


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used; the message names the file(s) and the missing piece."""


def kubeconfig_files(kubeconfig: str | None = None) -> list[Path]:
    listed = kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    return [Path(part).expanduser() for part in listed.split(os.pathsep) if part]


def merged_config(kubeconfig: str | None = None) -> dict[str, Any]:
    """The files merged: ``current-context`` and each named context, cluster and user, first wins."""
    files = kubeconfig_files(kubeconfig)
    merged: dict[str, Any] = {"current-context": None, "contexts": {}, "clusters": {}, "users": {}}
    found = False
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            continue
        except (OSError, yaml.YAMLError) as error:
            raise KubeconfigError(f"cannot read the kubeconfig {path}: {error}") from None
        if not isinstance(doc, dict):
            raise KubeconfigError(f"the kubeconfig {path} is not a YAML mapping")
        found = True
        merged["current-context"] = merged["current-context"] or doc.get("current-context") or None
        for section, inner in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for entry in doc.get(section) or []:
                if isinstance(entry, dict) and entry.get("name") and entry["name"] not in merged[section]:
                    merged[section][entry["name"]] = dict(entry.get(inner) or {}, _file=str(path))
    if not found:
        raise KubeconfigError(f"no kubeconfig found at {os.pathsep.join(map(str, files))}")
    return merged


def context_names(kubeconfig: str | None = None) -> list[str]:
    try:
        return sorted(merged_config(kubeconfig)["contexts"])
    except KubeconfigError:
        return []


def load_access(kubeconfig: str | None = None, context: str | None = None) -> KubeAccess:
    """The `KubeAccess` of ``context`` (default: the current one)."""
    config = merged_config(kubeconfig)
    where = os.pathsep.join(map(str, kubeconfig_files(kubeconfig)))
    name = context or config["current-context"]
    if not name:
        raise KubeconfigError(f"the kubeconfig {where} sets no current-context; name a context")
    entry = config["contexts"].get(name)
    if entry is None:
        raise KubeconfigError(f"the kubeconfig {where} has no context {name!r}")
    cluster = config["clusters"].get(entry.get("cluster"))
    if cluster is None or not cluster.get("server"):
        raise KubeconfigError(f"context {name!r}: cluster {entry.get('cluster')!r} (with a server) is not "
                              f"in the kubeconfig {where}")
    user = config["users"].get(entry.get("user"), {})
    if user.get("exec") or user.get("auth-provider"):  # plugins: the kubernetes package runs them
        paths = kubeconfig or os.environ.get("KUBECONFIG") or None
        return KubeAccess.from_kubeconfig(paths, name)
    server = str(cluster["server"]).rstrip("/")
    context_ssl = _ssl_context(cluster, user) if server.startswith("https://") else True
    return KubeAccess(server=server, ssl_context=context_ssl, authorization=_authorization(user))


def _ssl_context(cluster: Mapping[str, Any], user: Mapping[str, Any]) -> ssl.SSLContext:
    base = Path(str(cluster.get("_file", "."))).parent
    context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        context.load_verify_locations(cadata=_decoded(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        context.load_verify_locations(cafile=str(base / str(cluster["certificate-authority"])))
    if cluster.get("tls-server-name"):
        context.check_hostname = False  # verified against the CA; the name differs from the URL's
    certificate = _pem(user, "client-certificate", base)
    key = _pem(user, "client-key", base)
    if certificate and key:
        with tempfile.TemporaryDirectory(prefix="meshkit-kubeconfig-") as folder:
            cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            for path, data in ((cert_file, certificate), (key_file, key)):
                path.touch(mode=0o600)
                path.write_bytes(data)
            context.load_cert_chain(str(cert_file), str(key_file))
    return context


def _pem(user: Mapping[str, Any], field: str, base: Path) -> bytes | None:
    if user.get(f"{field}-data"):
        return _decoded(user[f"{field}-data"])
    if user.get(field):
        return (base / str(user[field])).read_bytes()
    return None


def _decoded(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as error:
        raise KubeconfigError(f"a *-data field of the kubeconfig is not base64: {error}") from None


def _authorization(user: Mapping[str, Any]) -> Callable[[], str | None]:
    token, token_file = user.get("token"), user.get("tokenFile")
    username, password = user.get("username"), user.get("password")

    def authorization() -> str | None:
        if token:
            return f"Bearer {token}"
        if token_file:  # read again each time: such tokens rotate
            return f"Bearer {Path(str(token_file)).expanduser().read_text().strip()}"
        if username and password:
            return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        return None

    return authorization
