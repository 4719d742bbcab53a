"""Names of clusters as people type them (``kind``, ``k8s:<context>``) -> a `ClusterClient`.

One parser for ``meshkit.connect(target)`` and the CLI's ``--context`` / ``$MESHKIT_CONTEXT``:

* ``kind`` — the kubeconfig context of ``meshkit kind up``'s cluster (``kind-meshkit``);
  ``kind:<cluster>`` names another kind cluster (context ``kind-<cluster>``);
* ``k8s`` — the kubeconfig's current context; ``k8s:<context>`` a named one;
* ``k8s:http://HOST:PORT`` — an API server URL without credentials (``kubectl proxy``, a mock).

The kubeconfig is ``$KUBECONFIG`` or ``~/.kube/config``, read by `meshkit.k8s.kubeconfig`
(exec and auth-provider plugins by the ``kubernetes`` package, the ``k8s`` extra). Problems
are `ClusterTargetError`, whose message says what to do.

Reads reach the control plane through the API server's service proxy, or, with
``$MESHKIT_KUBE_READS=port-forward`` (``reads=`` here), through ``kubectl port-forward``
(`meshkit.k8s.port_forward`).
"""

from __future__ import annotations

import os
from typing import Any

from meshkit.k8s.api import KubeAccess, KubeApiError
from meshkit.k8s.client import KubeClient
from meshkit.k8s.cluster_config import ClusterClient
from meshkit.k8s.kind import KindOptions
from meshkit.k8s.kubeconfig import context_names, load_access
from meshkit.k8s.port_forward import PortForward, PortForwardError, port_forward_argv

PREFIXES = ("kind", "k8s")
READS_ENV = "MESHKIT_KUBE_READS"


class ClusterTargetError(ValueError):
    """The target names no reachable cluster configuration; the message says why and what to do."""


def is_cluster_target(target: str | None) -> bool:
    """Whether ``target`` names a cluster (rather than a control plane URL)."""
    if not target:
        return False
    return target in PREFIXES or (target.split(":", 1)[0] in PREFIXES and ":" in target)


def api_url(target: str) -> str | None:
    """The API server URL a ``k8s:http(s)://HOST:PORT`` target names; None for any other target."""
    prefix, _, rest = target.partition(":")
    return rest if prefix == "k8s" and rest.startswith(("http://", "https://")) else None


def kube_context(target: str) -> str | None:
    """The kubeconfig context ``target`` names (None: the current one, or a URL target)."""
    prefix, _, rest = target.partition(":")
    if prefix == "kind":
        return KindOptions(cluster=rest).context if rest else KindOptions().context
    if prefix == "k8s" and rest and api_url(target) is None:
        return rest
    return None


def cluster_access(target: str, kubeconfig: str | None = None) -> KubeAccess:
    """Where the API server of ``target`` is and how to authenticate there."""
    if not is_cluster_target(target):
        raise ClusterTargetError(f"{target!r} names no cluster: use kind, kind:<cluster>, k8s, "
                                 "k8s:<context> or k8s:http://HOST:PORT")
    url = api_url(target)
    if url is not None:
        return KubeAccess.url(url)
    context = kube_context(target)
    try:
        return load_access(kubeconfig, context)
    except KubeApiError as error:  # an exec plugin needs the kubernetes package, which is missing
        raise ClusterTargetError(str(error)) from None
    except Exception as error:  # KubeconfigError, OSError, ssl.SSLError; the kubernetes package's own
        raise ClusterTargetError(_no_context(target, context, kubeconfig, error)) from None


def cluster_client(target: str, *, kubeconfig: str | None = None, timeout: float = 15.0,
                   reads: str | None = None, kubectl: str = "kubectl", **options: Any) -> ClusterClient:
    """A `ClusterClient` for ``target`` (``options`` go to `ClusterClient`, e.g. ``mirror_wait_s``).

    ``reads`` (default ``$MESHKIT_KUBE_READS``, else ``proxy``): how reads reach the control plane,
    ``proxy`` (the API server's service proxy) or ``port-forward`` (``kubectl port-forward``,
    stopped by ``client.close()`` or at exit).
    """
    reads = reads or os.environ.get(READS_ENV) or "proxy"
    if reads not in ("proxy", "port-forward"):
        raise ClusterTargetError(f"{READS_ENV}/reads: expected proxy or port-forward, got {reads!r}")
    access = cluster_access(target, kubeconfig)
    label = kube_context(target) or target.partition(":")[2] or "the current context"
    kube = KubeClient(access, timeout_s=timeout)
    if reads == "proxy":
        return ClusterClient(kube, label=label, timeout=timeout, **options)
    if api_url(target) is not None:
        raise ClusterTargetError("port-forward needs a kubeconfig context, not an API URL; use reads=proxy")
    argv = port_forward_argv(kube_context(target), kubectl=kubectl)
    if kubeconfig:
        argv[1:1] = ["--kubeconfig", kubeconfig]
    try:
        forward = PortForward(argv).start()
    except PortForwardError as error:
        raise ClusterTargetError(str(error)) from None
    return ClusterClient(kube, label=label, timeout=timeout, control_url=forward.url, on_close=forward.stop,
                         **options)


def _no_context(target: str, context: str | None, kubeconfig: str | None, error: Exception) -> str:
    known = context_names(kubeconfig)
    hint = "create the cluster with `meshkit kind up`" if target.startswith("kind") else \
        "name a context of the kubeconfig"
    names = f" (contexts there: {', '.join(known)})" if known else ""
    what = f"context {context!r}" if context else "a current context"
    return f"cannot use {what}: {error}; {hint}{names}"


