"""The "Gateway API" tab of Istio's "Egress Gateways with TLS Origination" task, verbatim in bash.

As `test_egress_gateway_tls_origination` (the Istio APIs tab) with the tab's own YAML: the Gateway
``cnn-egress-gateway`` (class ``istio``) whose HTTPS listener on port 80 has Istio's option
``gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL`` (its own proxy, ``cnn-egress-gateway-istio-0``,
takes the mesh's mutual TLS), the DestinationRule ``egressgateway-for-cnn`` (``ISTIO_MUTUAL`` with
``sni`` towards ``cnn-egress-gateway-istio``), the HTTPRoutes from the ServiceEntry to the gateway and from
the gateway to the Hostname edition.cnn.com port 443, and the DestinationRule originating TLS there. Every
``kubectl`` is ``meshkit``; edition.cnn.com is the ``external`` stand-in. Every byte stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.runtime import kube_gateways
from tests.e2e.cli import CLI_TIMEOUT, cli_env
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh
from tests.e2e.test_egress_gateway_tls_origination import CERTIFICATES, CURL_NGINX, MUTUAL_TLS_SERVER

BEFORE_YOU_BEGIN = f"""
meshkit apply -f {SAMPLES / "sleep.yaml"}
export SOURCE_POD=$(meshkit get pod -l app=sleep -o jsonpath={{.items..metadata.name}})
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http
    protocol: HTTP
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
EOF
"""

CURL_CNN = """
export SOURCE_POD=$(meshkit get pod -l app=sleep -o jsonpath={.items..metadata.name})
meshkit exec "${SOURCE_POD}" -c sleep -- curl -sSL -o /dev/null -D - http://edition.cnn.com/politics
"""

GATEWAY = """
meshkit apply -f - <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: cnn-egress-gateway
  annotations:
    networking.istio.io/service-type: ClusterIP
spec:
  gatewayClassName: istio
  listeners:
  - name: https-listener-for-tls-origination
    hostname: edition.cnn.com
    port: 80
    protocol: HTTPS
    tls:
      mode: Terminate
      options:
        gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL
    allowedRoutes:
      namespaces:
        from: Same
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: cnn-egress-gateway-istio.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 80
      tls:
        mode: ISTIO_MUTUAL
        sni: edition.cnn.com
EOF
"""

ROUTES = """
meshkit apply -f - <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: direct-cnn-to-egress-gateway
spec:
  parentRefs:
  - kind: ServiceEntry
    group: networking.istio.io
    name: cnn
  rules:
  - backendRefs:
    - name: cnn-egress-gateway-istio
      port: 80
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: forward-cnn-from-egress-gateway
spec:
  parentRefs:
  - name: cnn-egress-gateway
  hostnames:
  - edition.cnn.com
  rules:
  - backendRefs:
    - kind: Hostname
      group: networking.istio.io
      name: edition.cnn.com
      port: 443
EOF
"""

ORIGINATE_TLS = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: originate-tls-for-edition-cnn-com
spec:
  host: edition.cnn.com
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: SIMPLE # initiates HTTPS for connections to edition.cnn.com
EOF
"""

GATEWAY_LOG = """meshkit logs -l gateway.networking.k8s.io/gateway-name=cnn-egress-gateway -c istio-proxy | tail
"""  # noqa: E501

CLEANUP = """
meshkit delete serviceentry cnn
meshkit delete gtw cnn-egress-gateway
meshkit delete httproute direct-cnn-to-egress-gateway
meshkit delete httproute forward-cnn-from-egress-gateway
meshkit delete destinationrule egressgateway-for-cnn
meshkit delete destinationrule originate-tls-for-edition-cnn-com
"""

PROCESS = "cnn-egress-gateway-istio-0"

# "Perform mutual TLS origination with an egress gateway", Gateway API tab (the certificates and the nginx
# server are the Istio APIs tab's: `test_egress_gateway_tls_origination`)
CLIENT_CREDENTIAL = """
meshkit create secret -n default generic client-credential --from-file=tls.key=client.example.com.key \\
  --from-file=tls.crt=client.example.com.crt --from-file=ca.crt=example.com.crt
"""

NGINX_GATEWAY = """
meshkit apply -f - <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: nginx-egressgateway
  annotations:
    networking.istio.io/service-type: ClusterIP
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    hostname: my-nginx.mesh-external.svc.cluster.local
    port: 443
    protocol: HTTPS
    tls:
      mode: Terminate
      options:
        gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL
    allowedRoutes:
      namespaces:
        from: Same
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: nginx-egressgateway-istio-sds
rules:
- apiGroups:
  - ""
  resources:
  - secrets
  verbs:
  - get
  - watch
  - list
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: nginx-egressgateway-istio-sds
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: nginx-egressgateway-istio-sds
subjects:
- kind: ServiceAccount
  name: nginx-egressgateway-istio
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-nginx
spec:
  host: nginx-egressgateway-istio.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: ISTIO_MUTUAL
        sni: my-nginx.mesh-external.svc.cluster.local
EOF
"""

NGINX_ROUTES = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: direct-nginx-to-egress-gateway
spec:
  hosts:
  - my-nginx.mesh-external.svc.cluster.local
  gateways:
  - mesh
  http:
  - match:
    - port: 80
    route:
    - destination:
        host: nginx-egressgateway-istio.default.svc.cluster.local
        port:
          number: 443
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: forward-nginx-from-egress-gateway
spec:
  parentRefs:
  - name: nginx-egressgateway
  hostnames:
  - my-nginx.mesh-external.svc.cluster.local
  rules:
  - backendRefs:
    - name: my-nginx
      namespace: mesh-external
      port: 443
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata:
  name: my-nginx-reference-grant
  namespace: mesh-external
spec:
  from:
    - group: gateway.networking.k8s.io
      kind: HTTPRoute
      namespace: default
  to:
    - group: ""
      kind: Service
      name: my-nginx
EOF
"""

ORIGINATE_MTLS = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: originate-mtls-for-nginx
spec:
  host: my-nginx.mesh-external.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: MUTUAL
        credentialName: client-credential # this must match the secret created earlier to hold client certs
        sni: my-nginx.mesh-external.svc.cluster.local
        # subjectAltNames: # can be enabled if the certificate was generated with SAN as specified in previous section
        # - my-nginx.mesh-external.svc.cluster.local
EOF
"""  # noqa: E501

NGINX_LOG = """meshkit logs -l gateway.networking.k8s.io/gateway-name=nginx-egressgateway | grep 'my-nginx.mesh-external.svc.cluster.local' | grep HTTP
"""  # noqa: E501

NGINX_CLEANUP = """
meshkit delete secret nginx-server-certs nginx-ca-certs -n mesh-external
meshkit delete configmap nginx-configmap -n mesh-external
meshkit delete service my-nginx -n mesh-external
meshkit delete deployment my-nginx -n mesh-external
meshkit delete namespace mesh-external
meshkit delete secret client-credential
meshkit delete gtw nginx-egressgateway
meshkit delete role nginx-egressgateway-istio-sds
meshkit delete rolebinding nginx-egressgateway-istio-sds
meshkit delete virtualservice direct-nginx-to-egress-gateway
meshkit delete httproute forward-nginx-from-egress-gateway
meshkit delete destinationrule originate-mtls-for-nginx
meshkit delete destinationrule egressgateway-for-nginx
meshkit delete referencegrant my-nginx-reference-grant -n mesh-external
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("egressgw-tls-api"), ["external"], spare=3) as running:
        yield running


def ok(mesh: RunningMesh, script: str, cwd: Path) -> str:
    """Run ``script`` in bash (``set -e``) with ``meshkit`` as this test's CLI; its output."""
    prelude = f'set -e\nmeshkit() {{ "{sys.executable}" -m meshkit.cli "$@"; }}\n'
    done = subprocess.run(["bash", "-c", prelude + script], env=cli_env(mesh.home, mesh.base), cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT * 4, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def status_lines(headers: str) -> list[str]:
    return [line.split()[1] for line in headers.splitlines() if line.startswith("HTTP/")]


def test_tls_origination_with_a_gateway_api_egress_gateway(mesh: RunningMesh, tmp_path: Path) -> None:
    ok(mesh, BEFORE_YOU_BEGIN, tmp_path)
    assert status_lines(ok(mesh, CURL_CNN, tmp_path)) == ["301", "200"]  # straight out: 301, then https

    applied = ok(mesh, GATEWAY + ROUTES + ORIGINATE_TLS, tmp_path)
    assert f"pod/{PROCESS} started" in applied, applied
    mesh.wait_synced()
    through = ok(mesh, CURL_CNN, tmp_path)
    assert status_lines(through) == ["200"], through  # the gateway originated TLS: no 301

    log = ok(mesh, GATEWAY_LOG, tmp_path)
    [entry] = [e for e in map(json.loads, log.splitlines()) if e.get("path") == "/politics"]
    assert (entry["authority"], entry["status"]) == ("edition.cnn.com", 200), entry
    assert entry["upstream_cluster"] == "outbound|443||edition.cnn.com", entry
    assert entry["route_name"] == "default.forward-cnn-from-egress-gateway.0", entry

    # the hop to the Gateway's proxy is the mesh's mutual TLS: a plaintext caller gets nothing back
    port = kube_gateways.ports(mesh.base, 0)[0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /politics HTTP/1.1\r\nHost: edition.cnn.com\r\nConnection: close\r\n\r\n")
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert answer == b""

    ok(mesh, CLEANUP, tmp_path)
    assert PROCESS not in mesh.pids()
    mesh.wait_synced()
    assert status_lines(ok(mesh, CURL_CNN, tmp_path)) == ["301", "200"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the task's own openssl is not installed")
def test_mutual_tls_origination_with_a_gateway_api_egress_gateway(mesh: RunningMesh, tmp_path: Path) -> None:
    ok(mesh, BEFORE_YOU_BEGIN + CERTIFICATES + MUTUAL_TLS_SERVER, tmp_path)
    applied = ok(mesh, CLIENT_CREDENTIAL + NGINX_GATEWAY + NGINX_ROUTES + ORIGINATE_MTLS, tmp_path)
    assert "pod/nginx-egressgateway-istio-0 started" in applied, applied
    mesh.wait_synced()
    page = ok(mesh, CURL_NGINX, tmp_path)
    assert page.startswith("<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>"), page
    log = ok(mesh, NGINX_LOG, tmp_path)
    [entry] = [e for e in map(json.loads, log.splitlines()) if e.get("status") == 200]
    assert entry["route_name"] == "default.forward-nginx-from-egress-gateway.0", entry
    ok(mesh, NGINX_CLEANUP, tmp_path)
    assert "nginx-egressgateway-istio-0" not in mesh.pids()
