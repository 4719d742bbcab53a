"""The mesh's root certificate as a ConfigMap in every injected namespace (Istio's ``istio-ca-root-cert``).

The control plane keeps the root CA in the Secret ``meshkit-system/meshkit-ca-root``
(`meshkit.k8s.control_plane.ensure_ca_root`). Workloads must not read that Secret (it holds
the key); what they may read is the public root, which `RootCertPublisher` copies — the
certificate only — into the ConfigMap ``meshkit-ca-root-cert`` (key ``root-cert.pem``) of every
namespace but Kubernetes' own (as Istio's namespace controller does: a pod can be injected by its
own label in any namespace, and its sidecar mounts this ConfigMap to verify the control plane's
TLS certificate on 15012), and keeps there: created when missing, patched when the root changed.
It runs in the operator's periodic task (`meshkit.k8s.operator`), from the operator's namespace
index.

It must not do: copy the key, touch Kubernetes' own namespaces, or delete anything (the
ConfigMap stays as long as its namespace, as in Istio).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from meshkit.config.api_kinds import CA_ROOT_SECRET, SYSTEM_NAMESPACE
from meshkit.k8s import names

ROOT_CONFIGMAP = names.ROOT_CONFIGMAP
ROOT_KEY = names.ROOT_CERT_KEY
# Kubernetes' own namespaces (Istio's inject.IgnoredNamespaces): no mesh workload runs there
IGNORED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "local-path-storage"})

Request = Callable[..., Awaitable[Any]]  # (method, path, body=None) -> JSON answer, None on 404


class RootCertPublisher:
    """Copies the root certificate into each injected namespace (see the module docstring)."""

    def __init__(self, request: Request, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.request = request
        self.logger = logger
        self.published: dict[str, str] = {}  # namespace -> root PEM last written there

    async def root(self) -> str | None:
        secret = await self.request("GET", f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/secrets/{CA_ROOT_SECRET}")
        data = (secret or {}).get("data") or {}
        if not data.get(ROOT_KEY):
            return None  # the control plane has not created the root yet
        return base64.b64decode(data[ROOT_KEY]).decode()

    async def once(self, namespace_labels: Mapping[str, Mapping[str, str]]) -> int:
        """Publish into every namespace that lacks the current root; how many were written."""
        injected = sorted(ns for ns in namespace_labels if ns not in IGNORED_NAMESPACES)
        if not injected:
            return 0
        root = await self.root()
        if root is None:
            return 0
        written = 0
        for namespace in injected:
            if self.published.get(namespace) == root:
                continue
            path = f"/api/v1/namespaces/{namespace}/configmaps"
            current = await self.request("GET", f"{path}/{ROOT_CONFIGMAP}")
            if current is None:
                await self.request("POST", path, {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CONFIGMAP, "namespace": namespace,
                                 "labels": {"app.kubernetes.io/part-of": "meshkit"}},
                    "data": {ROOT_KEY: root}})
                written += 1
            elif (current.get("data") or {}).get(ROOT_KEY) != root:
                await self.request("PATCH", f"{path}/{ROOT_CONFIGMAP}", {"data": {ROOT_KEY: root}})
                written += 1
            self.published[namespace] = root
        if written:
            self.logger.info(f"published the mesh's root certificate into {written} namespace(s)")
        return written
