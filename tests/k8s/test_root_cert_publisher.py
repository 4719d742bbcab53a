"""The root certificate in each injected namespace (``meshkit-ca-root-cert``, Istio's ``istio-ca-root-cert``).

The operator runs against KMock with RBAC enforced (`operator_harness.enforce_rbac`); the test
plays the control plane by storing the root in Secret ``meshkit-system/meshkit-ca-root``.
"""

from __future__ import annotations

import base64
from typing import Any

import kmock as kmocklib
import pytest

from meshkit.k8s import names
from meshkit.k8s.inject import InjectSettings
from meshkit.k8s.operator import OperatorConfig
from meshkit.k8s.root_cert_publisher import ROOT_CONFIGMAP
from meshkit.k8s.webhook import self_signed_certificate
from tests.k8s.operator_harness import MANAGED, free_port, namespaces_parsed, running_operator, until

pytestmark = pytest.mark.timeout(90)

SECRET = "/api/v1/namespaces/meshkit-system/secrets"


def _configmap(kmock: Any, namespace: str) -> dict[str, Any] | None:
    key = (kmocklib.resource("", "v1", "configmaps"), namespace, ROOT_CONFIGMAP)
    return dict(kmock.objects[key]) if key in kmock.objects else None


def _secret(cert: bytes, key: bytes) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "meshkit-ca-root", "namespace": "meshkit-system"},
            "data": {"root-cert.pem": base64.b64encode(cert).decode(),
                     "root-key.pem": base64.b64encode(key).decode()}}


async def test_the_root_certificate_reaches_every_namespace_but_kubernetes_own(kmock: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    namespaces_parsed(monkeypatch)
    config = OperatorConfig(inject=InjectSettings(image="meshkit:test"), status_resync_s=0.3,
                            webhook_addr="127.0.0.1", webhook_port=free_port(), managed=MANAGED)
    cert, key = self_signed_certificate(["meshkit-root"])
    async with running_operator(kmock, config) as running:
        await running.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                     "metadata": {"name": "meshkit-system"}})
        await running.create(SECRET, _secret(cert, key))
        # kube-system first: once the later namespaces have the ConfigMap, a pass has seen it too
        for name, labels in (("kube-system", {}), ("bookinfo", {names.INJECTION_LABEL: "enabled"}),
                             ("plain", {})):
            await running.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": name, "labels": labels}})
        published = await until("the root's ConfigMap in bookinfo", lambda: _configmap(kmock, "bookinfo"))
        assert published["data"] == {"root-cert.pem": cert.decode()}  # the certificate, never the key
        # a pod may be injected by its own label anywhere: every namespace but Kubernetes' own has it
        plain = await until("the root's ConfigMap in plain", lambda: _configmap(kmock, "plain"))
        assert plain["data"] == published["data"]
        assert _configmap(kmock, "kube-system") is None
        assert running.rbac.refused == []

        # a new root (restored from a backup, rotated by hand) follows into the namespace
        new_cert, new_key = self_signed_certificate(["meshkit-root-2"])
        async with running.session.patch(f"{str(kmock.url).rstrip('/')}{SECRET}/meshkit-ca-root",
                                          json={"data": _secret(new_cert, new_key)["data"]},
                                          headers={"Content-Type": "application/merge-patch+json"}) as answer:
            assert answer.status == 200, await answer.text()
        await until("the new root in bookinfo", lambda: (_configmap(kmock, "bookinfo") or {}).get(
            "data", {}).get("root-cert.pem") == new_cert.decode())
        assert running.rbac.refused == []
