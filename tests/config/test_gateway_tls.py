"""HTTPS Gateways: TLS Secrets (``kubectl create secret tls``), ``credentialName``, and what the ingress
gets in its snapshot. Istio's "Secure Gateways" task YAML, with certificates made by a test CA."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError
from meshkit.config.registry import RegistryView
from meshkit.config.secrets import Secret
from meshkit.proxy.snapshot import Snapshot
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.config.bookinfo import node_for
from tests.config.test_compile_contract import GATEWAY

_CA, _CA_KEY = issue_ca("example.com")
_CERT, _KEY = issue_server(["httpbin.example.com"], _CA, _CA_KEY)
CERT, KEY = pem(_CERT), key_pem(_KEY)


def tls_secret(name: str = "httpbin-credential", namespace: str = "istio-system", cert: str = CERT,
               key: str = KEY) -> str:
    """What ``kubectl create -n NS secret tls NAME --key=... --cert=... --dry-run=client -o yaml`` writes."""
    return f"""apiVersion: v1
data:
  tls.crt: {base64.b64encode(cert.encode()).decode()}
  tls.key: {base64.b64encode(key.encode()).decode()}
kind: Secret
metadata:
  name: {name}
  namespace: {namespace}
type: kubernetes.io/tls
"""


# The "Secure Gateways" task's Gateway and VirtualService (istio.io, verbatim)
GATEWAY_YAML = """apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential # must be the same as secret
    hosts:
    - httpbin.example.com
"""
VIRTUAL_SERVICE_YAML = """apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"""


def _codes(text: str) -> list[tuple[str, str]]:
    return [(m.code, m.field) for m in analyze(load_resources(text)) if m.code.startswith("MK040")]


def test_a_kubectl_tls_secret_loads_and_gives_its_pair() -> None:
    [secret] = load_resources(tls_secret())
    assert isinstance(secret, Secret) and secret.ref == "Secret/istio-system/httpbin-credential"
    assert secret.certificate_pair() == (CERT, KEY)


def test_istio_s_generic_cert_key_secret_loads() -> None:
    text = (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: c, namespace: istio-system}}\n"
            f"stringData:\n  cert: {json.dumps(CERT)}\n  key: {json.dumps(KEY)}\n")
    [secret] = load_resources(text)
    assert secret.certificate_pair()[0].startswith("-----BEGIN CERTIFICATE-----")


def test_other_secrets_are_still_ignored_with_a_warning() -> None:
    warnings: list[Any] = []
    assert load_resources("apiVersion: v1\nkind: Secret\nmetadata: {name: token}\n"
                          "type: kubernetes.io/service-account-token\ndata: {token: YQ==}\n",
                          warnings=warnings) == []
    assert [w.code for w in warnings] == ["MK0009"]
    # an Opaque Secret (kubectl create secret generic) is stored: a pod mounts it, a DestinationRule reads it
    [opaque] = load_resources("apiVersion: v1\nkind: Secret\nmetadata: {name: token}\ndata: {token: YQ==}\n")
    assert opaque.values() == {"token": "a"} and not opaque.has_pair()


@pytest.mark.parametrize(("change", "text"), [
    (("tls.key", "tls.kex"), "needs tls.crt and tls.key"),
    (("tls.crt: ", "tls.crt: !!str not-base64-"), "data.tls.crt: not base64"),
])
def test_a_bad_tls_secret_is_named(change: tuple[str, str], text: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_resources(tls_secret().replace(*change))
    assert text in str(error.value) and "Secret/istio-system/httpbin-credential" in str(error.value)


def test_the_ingress_gets_the_https_server_with_the_secret_s_certificate() -> None:
    resources = load_resources(tls_secret() + "---\n" + GATEWAY_YAML + "---\n" + VIRTUAL_SERVICE_YAML)
    doc = compile_snapshot(resources, RegistryView(), GATEWAY)
    [server] = doc["gateway_tls"]["servers"]
    assert server["hosts"] == ["httpbin.example.com"] and server["credential"] == "httpbin-credential"
    assert (server["cert_pem"], server["key_pem"]) == (CERT, KEY)
    assert server["gateway"] == "default/mygateway" and server["port"] == 443
    assert "httpbin.example.com" in [v["name"] for v in doc["outbound"]["virtual_hosts"]]
    assert Snapshot.from_json(doc).gateway_tls[0].hosts == ("httpbin.example.com",)
    sidecar = compile_snapshot(resources, RegistryView(), node_for("productpage"))
    assert "gateway_tls" not in sidecar  # only gateway proxies serve Gateways


def test_the_secret_may_also_be_in_the_gateway_s_namespace_but_not_elsewhere() -> None:
    assert _codes(tls_secret(namespace="default") + "---\n" + GATEWAY_YAML) == []
    assert _codes(tls_secret(namespace="foo") + "---\n" + GATEWAY_YAML) == [
        ("MK0404", "spec.servers[0].tls.credentialName")]


def test_a_missing_secret_is_an_error_naming_the_gateway_and_field() -> None:
    [message] = [m for m in analyze(load_resources(GATEWAY_YAML)) if m.code == "MK0404"]
    assert message.resource == "Gateway/default/mygateway"
    assert message.field == "spec.servers[0].tls.credentialName"
    assert 'Secret "httpbin-credential" not found in namespace istio-system or default' in message.text
    # the ingress serves no TLS for it meanwhile (a Secret deleted after the Gateway: as on Istio)
    doc = compile_snapshot(load_resources(GATEWAY_YAML), RegistryView(), GATEWAY)
    assert doc["gateway_tls"] == {"servers": []}


def test_an_https_server_without_a_credential_is_an_error() -> None:
    text = GATEWAY_YAML.replace("      credentialName: httpbin-credential # must be the same as secret\n", "")
    assert _codes(text) == [("MK0403", "spec.servers[0].tls")]
    no_tls = GATEWAY_YAML.replace("    tls:\n      mode: SIMPLE\n", "").replace(
        "      credentialName: httpbin-credential # must be the same as secret\n", "")
    assert _codes(no_tls) == [("MK0403", "spec.servers[0].tls")]


def test_kubectl_dry_run_output_loads_as_written() -> None:
    """``kubectl create ... --dry-run=client -o yaml`` writes ``creationTimestamp: null``: accepted."""
    text = tls_secret().replace("metadata:\n", "metadata:\n  creationTimestamp: null\n")
    [secret] = load_resources(text)
    assert secret.ref == "Secret/istio-system/httpbin-credential"
    with pytest.raises(ConfigError):  # a real timestamp still names the field (kubectl get output)
        load_resources(text.replace("creationTimestamp: null", "creationTimestamp: '2026-12-07T05:00:00Z'"))


# The "Secure Gateways" task's "Gateway API" tab (istio.io): the Gateway in istio-system with an HTTPS
# listener whose certificateRefs names the task's Secret, and the HTTPRoute in default
KUBE_GATEWAY_YAML = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: mygateway
  namespace: istio-system
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    hostname: "httpbin.example.com"
    port: 443
    protocol: HTTPS
    tls:
      mode: Terminate
      certificateRefs:
      - name: httpbin-credential
    allowedRoutes:
      namespaces:
        from: Selector
        selector:
          matchLabels:
            kubernetes.io/metadata.name: default
"""
HTTP_ROUTE_YAML = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: httpbin
  namespace: default
spec:
  parentRefs:
  - name: mygateway
    namespace: istio-system
  hostnames: ["httpbin.example.com"]
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /status
    - path:
        type: PathPrefix
        value: /delay
    backendRefs:
    - name: httpbin
      port: 8000
"""


def test_a_gateway_api_https_listener_serves_its_secret_s_certificate() -> None:
    from meshkit.config.httproutes import with_status  # noqa: PLC0415

    resources = load_resources(tls_secret() + "---\n" + KUBE_GATEWAY_YAML + "---\n" + HTTP_ROUTE_YAML)
    doc = compile_snapshot(resources, RegistryView(), GATEWAY)
    [server] = doc["gateway_tls"]["servers"]
    assert server["hosts"] == ["httpbin.example.com"] and server["credential"] == "httpbin-credential"
    assert (server["cert_pem"], server["key_pem"]) == (CERT, KEY) and server["port"] == 443
    assert server["gateway"] == "istio-system/mygateway"
    assert "httpbin.example.com" in [v["name"] for v in doc["outbound"]["virtual_hosts"]]
    assert Snapshot.from_json(doc).gateway_tls[0].hosts == ("httpbin.example.com",)
    [gateway] = [r for r in resources if r.kind == "Gateway"]
    [listener] = with_status(gateway, resources, RegistryView())["status"]["listeners"]
    resolved = {c["type"]: (c["status"], c["reason"]) for c in listener["conditions"]}
    assert resolved["ResolvedRefs"] == ("True", "ResolvedRefs") and listener["attachedRoutes"] == 1


def test_a_listener_whose_secret_is_missing_is_reported_and_not_served() -> None:
    from meshkit.config.httproutes import with_status  # noqa: PLC0415

    resources = load_resources(KUBE_GATEWAY_YAML + "---\n" + HTTP_ROUTE_YAML)
    [message] = [m for m in analyze(resources) if m.code == "MK0415"]
    assert message.resource == "Gateway.gateway.networking.k8s.io/istio-system/mygateway"
    assert message.field == "spec.listeners[0].tls.certificateRefs[0]"
    assert "Secret istio-system/httpbin-credential does not exist" in message.text
    assert compile_snapshot(resources, RegistryView(), GATEWAY)["gateway_tls"] == {"servers": []}
    [gateway] = [r for r in resources if r.kind == "Gateway"]
    [listener] = with_status(gateway, resources, RegistryView())["status"]["listeners"]
    resolved = {c["type"]: (c["status"], c["reason"]) for c in listener["conditions"]}
    assert resolved["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert resolved["Programmed"] == ("False", "Invalid")


@pytest.mark.parametrize(("change", "text"), [
    (("      certificateRefs:\n      - name: httpbin-credential\n", ""), "needs tls.certificateRefs"),
    (("mode: Terminate", "mode: Passthrough"), "Passthrough"),
])
def test_an_https_listener_without_a_certificate_or_passing_tls_through_is_named(
        change: tuple[str, str], text: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_resources(KUBE_GATEWAY_YAML.replace(*change))
    assert text in str(error.value) and "spec.listeners[0]" in str(error.value)
