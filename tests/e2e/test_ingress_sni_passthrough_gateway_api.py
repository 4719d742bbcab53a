"""The "Gateway API" tab of Istio's "Ingress Gateway without TLS Termination" on the local mesh, verbatim.

The task's certificates, nginx (the Secret, the ConfigMap with its ``nginx.conf``, the Service and
Deployment ``my-nginx`` with a sidecar) as in the Istio APIs tab (tests/e2e/test_ingress_sni_passthrough.py
holds those lines), then this tab's own steps, each as its meshkit form (``kubectl`` -> ``meshkit``): the
Gateway ``mygateway`` (``gatewayClassName: istio``, a ``TLS`` listener ``https`` on 443 for
``nginx.example.com``, ``tls.mode: Passthrough``) and the ``TLSRoute`` ``nginx`` to ``my-nginx:443``;
``kubectl wait --for=condition=programmed gtw mygateway``; ``INGRESS_HOST`` from the Gateway's
``status.addresses``; the curl with ``--resolve ... --cacert``. The local mesh's one ingress serves the
Gateway (Istio would start ``mygateway-istio`` behind a LoadBalancer): the listener's 443 is the ingress
Service's ``https`` port, which ``SECURE_INGRESS_PORT`` is read from (the tab reads the listener's
``port``, Istio's Service port; docs/from-istio.md says so). nginx's certificate reaches curl unopened
and nginx's welcome page comes back; a name no TLSRoute takes is not passed through; after the
cleanup (``delete gtw``, ``delete tlsroute``) no filter chain takes the name.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh import RunningMesh, start_mesh
from tests.e2e.test_ingress_sni_passthrough import CERTIFICATES, DEPLOY_NGINX, bash

pytestmark = pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("curl")),
                                reason="the task's own openssl and curl are not installed")

GATEWAY = """
meshkit apply -f - <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    hostname: "nginx.example.com"
    port: 443
    protocol: TLS
    tls:
      mode: Passthrough
    allowedRoutes:
      namespaces:
        from: All
EOF
"""
TLS_ROUTE = """
meshkit apply -f - <<EOF
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata:
  name: nginx
spec:
  parentRefs:
  - name: mygateway
  hostnames:
  - "nginx.example.com"
  rules:
  - backendRefs:
    - name: my-nginx
      port: 443
EOF
"""
WAIT_AND_ADDRESS = """
meshkit wait --for=condition=programmed gtw mygateway
export INGRESS_HOST=$(meshkit get gtw mygateway -o jsonpath='{.status.addresses[0].value}')
"""
# the tab's port line reads the listener's 443; the local ingress serves it on its Service's https port
TAB_PORT = """export SECURE_INGRESS_PORT=$(meshkit get gtw mygateway -o jsonpath='{.spec.listeners[?(@.name=="https")].port}')
"""  # noqa: E501
LOCAL_PORT = """export SECURE_INGRESS_PORT=$(meshkit get service istio-ingressgateway -n istio-system -o jsonpath='{.spec.ports[?(@.name=="https")].port}')
"""  # noqa: E501
CURL = """curl -v --resolve "nginx.example.com:$SECURE_INGRESS_PORT:$INGRESS_HOST" --cacert example_certs/example.com.crt "https://nginx.example.com:$SECURE_INGRESS_PORT"
"""  # noqa: E501
OTHER_NAME = """curl -v --resolve "other.example.com:$SECURE_INGRESS_PORT:$INGRESS_HOST" --cacert example_certs/example.com.crt "https://other.example.com:$SECURE_INGRESS_PORT"
"""  # noqa: E501
CLEANUP = """
meshkit delete gtw mygateway
meshkit delete tlsroute nginx
"""
CLEANUP_NGINX = """set -e
meshkit delete secret nginx-server-certs
meshkit delete configmap nginx-configmap
meshkit delete service my-nginx
meshkit delete deployment my-nginx
rm ./nginx.conf
rm -rf ./example_certs
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("sni-passthrough-gtw"), ["none"], spare=2) as running:
        yield running


def test_ingress_gateway_without_tls_termination_gateway_api(mesh: RunningMesh, tmp_path: Path) -> None:
    code, out, err = bash(mesh, "set -e\n" + CERTIFICATES + DEPLOY_NGINX, tmp_path)
    assert code == 0, out + err

    code, out, err = bash(mesh, "set -e\n" + GATEWAY + TLS_ROUTE, tmp_path)
    assert code == 0, out + err
    assert "Gateway.gateway.networking.k8s.io/default/mygateway created" in out, out
    assert "TLSRoute/default/nginx created" in out, out
    code, out, err = bash(mesh, "set -e\n" + WAIT_AND_ADDRESS + 'echo "$INGRESS_HOST"\n' + TAB_PORT
                          + 'echo "$SECURE_INGRESS_PORT"\n', tmp_path)
    assert code == 0, out + err
    assert out.splitlines() == ["gateway.gateway.networking.k8s.io/mygateway condition met", "127.0.0.1",
                                "443"], out
    code, out, _ = bash(mesh, "meshkit get tlsroute nginx -o yaml", tmp_path)
    assert "reason: Accepted" in out and "reason: ResolvedRefs" in out and "status: 'False'" not in out, out

    mesh.wait_synced()
    code, out, err = bash(mesh, WAIT_AND_ADDRESS + LOCAL_PORT + CURL, tmp_path)
    assert code == 0, err
    # what the task shows: nginx's own certificate, verified against the task's root, then nginx's page
    assert "subject: CN=nginx.example.com; O=some organization" in err, err
    assert "issuer: O=example Inc.; CN=example.com" in err and "SSL certificate verify ok." in err, err
    assert "< HTTP/1.1 200 OK" in err and "< Server: nginx/" in err, err
    assert "<title>Welcome to nginx!</title>" in out, out
    code, out, _ = bash(mesh, "meshkit logs ingressgateway --access --tail 0", tmp_path)
    assert '"requested_server_name":"nginx.example.com"' in out, out
    assert '"upstream_cluster":"outbound|443||my-nginx.default.svc.cluster.local"' in out, out

    # a name no TLSRoute takes: the ingress has no filter chain for it and closes the connection
    code, out, err = bash(mesh, WAIT_AND_ADDRESS + LOCAL_PORT + OTHER_NAME, tmp_path)
    assert code != 0 and "Welcome to nginx!" not in out, out + err

    # cleanup, as the tab: without the Gateway and the TLSRoute no filter chain takes the name
    code, out, err = bash(mesh, CLEANUP, tmp_path)
    assert code == 0, out + err
    mesh.wait_synced()
    code, out, err = bash(mesh, "export INGRESS_HOST=127.0.0.1\n" + LOCAL_PORT + CURL, tmp_path)
    assert code != 0 and "Welcome to nginx!" not in out, out + err
    code, out, err = bash(mesh, CLEANUP_NGINX, tmp_path)
    assert code == 0, out + err
