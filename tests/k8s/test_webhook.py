"""Cluster mode of the webhook server, against KMock: real TLS, CA bundle published, namespace filled.

The static webhook configurations from ``operator/deploy/base/webhooks.yaml`` are created in
KMock; the operator runs as in a cluster (self-signed serving certificate, no kopf-managed
configurations) and must put its CA into every webhook's ``clientConfig.caBundle``. The test
then talks HTTPS to the service paths of those configurations, trusting only that bundle.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import kmock as kmocklib
import pytest
import yaml
from cryptography import x509

from meshkit.k8s import names
from meshkit.k8s.operator import OperatorConfig
from meshkit.k8s.webhook import (
    ApiAccess,
    fill_namespace,
    native_sidecars_supported,
    self_signed_certificate,
    server_version,
)
from tests.k8s.operator_harness import admission_review, free_port, namespaces_parsed, running_operator, until

pytestmark = pytest.mark.timeout(90)

WEBHOOKS_YAML = Path(__file__).resolve().parents[2] / "operator" / "deploy" / "base" / "webhooks.yaml"
# the injector plus one validator per Istio kind: every webhook of the committed configurations
STATIC_WEBHOOKS = sum(len(doc.get("webhooks") or [])
                      for doc in yaml.safe_load_all(WEBHOOKS_YAML.read_text()) if doc)
PLURALS = {"MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
           "ValidatingWebhookConfiguration": "validatingwebhookconfigurations"}


def _configs_in(kmock: Any) -> list[dict[str, Any]]:
    found = []
    for plural in PLURALS.values():
        resource = kmocklib.resource("admissionregistration.k8s.io", "v1", plural)
        for (res, _, _), obj in kmock.objects.items():
            if res == resource:
                found.append(dict(obj))
    return found


async def test_cluster_mode_publishes_ca_and_serves_https(kmock: Any, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    namespaces_parsed(monkeypatch)
    static = [doc for doc in yaml.safe_load_all(WEBHOOKS_YAML.read_text()) if doc]
    port = free_port()
    config = OperatorConfig(
        webhook_addr="127.0.0.1", webhook_port=port, cert_dir=tmp_path / "certs", managed=None,
        # as the operator's service account: KMock authorizes it with the committed ClusterRole
        api=ApiAccess(server=str(kmock.url).rstrip("/"), token="meshkit-operator", insecure=True),
        hostnames=(f"{names.WEBHOOK_SERVICE}.{names.SYSTEM_NAMESPACE}.svc", "localhost"),
    )
    async with aiohttp.ClientSession() as session:
        for doc in static:  # created before the operator starts, as `kubectl apply -k` would
            url = f"{str(kmock.url).rstrip('/')}/apis/admissionregistration.k8s.io/v1/{PLURALS[doc['kind']]}"
            async with session.post(url, json=doc) as response:
                assert response.status in (200, 201), await response.text()

    async with running_operator(kmock, config) as running:
        def published() -> list[str]:
            hooks = [h for c in _configs_in(kmock) for h in c.get("webhooks") or []]
            bundles = [h.get("clientConfig", {}).get("caBundle") for h in hooks]
            return bundles if len(bundles) == STATIC_WEBHOOKS and all(bundles) else []

        bundles = await until("caBundle on every static webhook", published)
        assert running.rbac.refused == []
        assert any("patch mutatingwebhookconfigurations" in call for call in running.rbac.seen)
        assert len(set(bundles)) == 1
        ca_pem = base64.b64decode(bundles[0])
        # nothing else in the static configurations changed
        for config_obj in _configs_in(kmock):
            original = next(d for d in static if d["metadata"]["name"] == config_obj["metadata"]["name"])
            for before, after in zip(original["webhooks"], config_obj["webhooks"], strict=True):
                client = {k: v for k, v in after["clientConfig"].items() if k != "caBundle"}
                assert {**after, "clientConfig": client} == before

        trusted = ssl.create_default_context(cadata=ca_pem.decode())
        path = static[0]["webhooks"][0]["clientConfig"]["service"]["path"]
        url = f"https://localhost:{port}{path}"
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {
            names.INJECT_OVERRIDE_LABEL: "true"}}, "spec": {"containers": [{"name": "app", "image": "x"}]}}
        review = admission_review(pod, ("", "v1", "pods"), "default")
        response = await running.post_review(url, review, ssl=trusted)
        assert response["allowed"] is True and response["patchType"] == "JSONPatch"

        # the server really is TLS with that certificate: a client trusting only the system CAs fails
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await running.post_review(url, review, ssl=ssl.create_default_context())

        # validation over the same server, by the path of the static configuration
        vs_path = next(h["clientConfig"]["service"]["path"] for d in static for h in d["webhooks"]
                       if h["name"].startswith("virtualservices."))
        bad = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "reviews"},
               "spec": {"hosts": ["reviews"], "http": [{"route": [  # weights summing to 0: refused
                   {"destination": {"host": "reviews", "subset": "v1"}, "weight": 0},
                   {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0}]}]}}
        review = admission_review(bad, ("networking.istio.io", "v1", "virtualservices"), "bookinfo")
        response = await running.post_review(f"https://localhost:{port}{vs_path}", review, ssl=trusted)
        assert response["allowed"] is False
        assert "VirtualService/bookinfo/reviews" in response["status"]["message"]


def test_fill_namespace_copies_the_request_namespace() -> None:
    review = {"request": {"namespace": "bookinfo", "object": {"metadata": {"name": "p"}}, "oldObject": None}}
    filled = fill_namespace(review)
    assert filled["request"]["object"]["metadata"]["namespace"] == "bookinfo"
    assert "namespace" not in review["request"]["object"]["metadata"], "input must not change"
    kept = {"request": {"namespace": "a", "object": {"metadata": {"namespace": "b"}}}}
    assert fill_namespace(kept)["request"]["object"]["metadata"]["namespace"] == "b"


def test_self_signed_certificate_names_the_service() -> None:
    cert_pem, key_pem = self_signed_certificate(["meshkit-webhook.meshkit-system.svc", "localhost"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["meshkit-webhook.meshkit-system.svc", "localhost"]
    assert b"PRIVATE KEY" in key_pem


async def test_the_bundle_is_published_once_the_configurations_exist(
        kmock: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The operator starting before ``webhooks.yaml`` is applied (or with the API briefly away) used
    to fail publishing and exit; it retries until the configurations are there."""
    namespaces_parsed(monkeypatch)
    static = [doc for doc in yaml.safe_load_all(WEBHOOKS_YAML.read_text()) if doc]
    config = OperatorConfig(
        webhook_addr="127.0.0.1", webhook_port=free_port(), cert_dir=tmp_path / "certs", managed=None,
        # as the operator's service account: KMock authorizes it with the committed ClusterRole
        api=ApiAccess(server=str(kmock.url).rstrip("/"), token="meshkit-operator", insecure=True),
        hostnames=(f"{names.WEBHOOK_SERVICE}.{names.SYSTEM_NAMESPACE}.svc", "localhost"),
    )
    async with running_operator(kmock, config) as running:
        await until("a failed attempt to read a webhook configuration", lambda: any(
            r.method == "GET" and r.resource is not None
            and (r.resource.plural or "").endswith("webhookconfigurations") for r in list(kmock)))
        for doc in static:  # applied late
            url = f"/apis/admissionregistration.k8s.io/v1/{PLURALS[doc['kind']]}"
            async with running.session.post(f"{str(kmock.url).rstrip('/')}{url}", json=doc) as response:
                assert response.status in (200, 201), await response.text()

        def published() -> bool:
            hooks = [h for c in _configs_in(kmock) for h in c.get("webhooks") or []]
            bundles = [h.get("clientConfig", {}).get("caBundle") for h in hooks]
            return len(hooks) == STATIC_WEBHOOKS and all(bundles)

        await until("caBundle on every static webhook after the late apply", published)
        assert running.rbac.refused == []


async def test_native_sidecars_follow_the_api_servers_version(kmock: Any) -> None:
    api = ApiAccess(server=str(kmock.url).rstrip("/"), insecure=True)
    # KMock says 1.26: no SidecarContainers by default, so the proxy stays a regular container
    assert await asyncio.to_thread(server_version, api) == (1, 26)
    assert not await asyncio.to_thread(native_sidecars_supported, api)
    kmock["get /version"] << {"major": "1", "minor": "30+", "gitVersion": "v1.30.0"}
    assert await asyncio.to_thread(native_sidecars_supported, api)
    unreachable = ApiAccess(server=f"http://127.0.0.1:{free_port()}", insecure=True)
    assert not await asyncio.to_thread(native_sidecars_supported, unreachable)
