"""Istio's "Egress Gateways with TLS Origination" task (Istio APIs tab), verbatim in bash, on the real mesh.

istio.io content/en/docs/tasks/traffic-management/egress/egress-gateway-tls-origination (its snips.sh):
"Perform TLS origination with an egress gateway" sends sleep's plain ``http://edition.cnn.com/politics``
to the egress gateway over Istio mutual TLS (the Gateway's server on port 80 says ``tls.mode:
ISTIO_MUTUAL``, the DestinationRule subset ``cnn`` the same with ``sni: edition.cnn.com``), and the
gateway originates TLS to edition.cnn.com:443 (DestinationRule ``SIMPLE``): the stand-in's 200 at once,
no 301. "Perform mutual TLS origination with an egress gateway" does the same for nginx in
``mesh-external`` requiring a client certificate: the ``client-credential`` Secret in ``istio-system``
(the egress gateway's namespace) and ``MUTUAL`` with ``credentialName`` on the gateway. Each ``kubectl``
is ``meshkit``; the egress gateway is ``meshkit deploy egressgateway`` (istioctl's demo profile has it);
edition.cnn.com is the ``external`` stand-in; sleep.yaml is Istio's. Besides the answers, the hop to the
gateway is checked to be mutual TLS: a plaintext caller and a TLS caller without the mesh's client
certificate are both refused on the gateway's port, and the gateway counts the mutual TLS it accepted.
Every byte stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.runtime import egressgw
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh

# the mutual TLS server of Istio's "Egress TLS Origination" task, which this task deploys the same way
from tests.e2e.test_egress_mutual_tls_origination import CERTIFICATES, MUTUAL_TLS_SERVER, bash

BEFORE_YOU_BEGIN = f"""
meshkit apply -f {SAMPLES / "sleep.yaml"}
meshkit deploy egressgateway
export SOURCE_POD=$(meshkit get pod -l app=sleep -o jsonpath={{.items..metadata.name}})
"""

SERVICE_ENTRY = """
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

GATEWAY_CNN = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: https-port-for-tls-origination
      protocol: HTTPS
    hosts:
    - edition.cnn.com
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
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

VIRTUAL_SERVICE_CNN = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 443
      weight: 100
EOF
"""

ORIGINATE_TLS_CNN = """
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

GATEWAY_LOG_CNN = "meshkit logs -l istio=egressgateway -c istio-proxy -n istio-system | tail\n"

CLEANUP_CNN = """
meshkit delete gw istio-egressgateway
meshkit delete serviceentry cnn
meshkit delete virtualservice direct-cnn-through-egress-gateway
meshkit delete destinationrule originate-tls-for-edition-cnn-com
meshkit delete destinationrule egressgateway-for-cnn
"""


CLIENT_CREDENTIAL = """
meshkit create secret -n istio-system generic client-credential --from-file=tls.key=client.example.com.key \\
  --from-file=tls.crt=client.example.com.crt --from-file=ca.crt=example.com.crt
"""

GATEWAY_NGINX = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - my-nginx.mesh-external.svc.cluster.local
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-nginx
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: nginx
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

VIRTUAL_SERVICE_NGINX = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: direct-nginx-through-egress-gateway
spec:
  hosts:
  - my-nginx.mesh-external.svc.cluster.local
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: nginx
        port:
          number: 443
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
    route:
    - destination:
        host: my-nginx.mesh-external.svc.cluster.local
        port:
          number: 443
      weight: 100
EOF
"""

ORIGINATE_MTLS_NGINX = """
meshkit apply -n istio-system -f - <<EOF
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

CURL_NGINX = """meshkit exec "$(meshkit get pod -l app=sleep -o jsonpath={.items..metadata.name})" -c sleep -- curl -sS http://my-nginx.mesh-external.svc.cluster.local
"""  # noqa: E501
GATEWAY_LOG_NGINX = """meshkit logs -l istio=egressgateway -n istio-system | grep 'my-nginx.mesh-external.svc.cluster.local' | grep HTTP
"""  # noqa: E501

CLEANUP_NGINX = """
meshkit delete secret nginx-server-certs nginx-ca-certs -n mesh-external
meshkit delete configmap nginx-configmap -n mesh-external
meshkit delete service my-nginx -n mesh-external
meshkit delete deployment my-nginx -n mesh-external
meshkit delete namespace mesh-external
meshkit delete secret client-credential -n istio-system
meshkit delete gw istio-egressgateway
meshkit delete virtualservice direct-nginx-through-egress-gateway
meshkit delete destinationrule -n istio-system originate-mtls-for-nginx
meshkit delete destinationrule egressgateway-for-nginx
rm example.com.crt example.com.key my-nginx.mesh-external.svc.cluster.local.crt my-nginx.mesh-external.svc.cluster.local.key my-nginx.mesh-external.svc.cluster.local.csr client.example.com.crt client.example.com.csr client.example.com.key
rm ./nginx.conf
"""  # noqa: E501


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("egressgw-tls"), ["external"], spare=3) as running:
        yield running



def ok(mesh: RunningMesh, script: str, cwd: Path) -> str:
    code, out, err = bash(mesh, "set -e\n" + script, cwd)
    assert code == 0, out + err
    return out


def status_lines(headers: str) -> list[str]:
    return [line.split()[1] for line in headers.splitlines() if line.startswith("HTTP/")]


def gateway_stats(mesh: RunningMesh) -> dict[str, Any]:
    admin = egressgw.ports(mesh.base)[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=10) as answer:
        found: dict[str, Any] = json.loads(answer.read())
    return found


def plaintext_answer(port: int, host: str) -> bytes:
    """A caller outside the mesh sending plain HTTP to the gateway's port: what it gets back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        try:
            return sock.recv(65536)
        except ConnectionResetError:
            return b""


def tls_without_client_certificate(port: int, host: str) -> str:
    """A TLS caller with SNI ``host`` and no client certificate: the handshake's or the request's end."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as sock:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                return "answered: " + sock.recv(65536).decode(errors="replace")
        except (ssl.SSLError, ConnectionError) as exc:
            return f"refused: {exc}"


def test_tls_origination_with_an_egress_gateway(mesh: RunningMesh, tmp_path: Path) -> None:
    ok(mesh, BEFORE_YOU_BEGIN + SERVICE_ENTRY, tmp_path)
    direct = ok(mesh, CURL_CNN, tmp_path)  # the ServiceEntry alone: 301, then -L follows it over https
    assert status_lines(direct) == ["301", "200"], direct
    assert "location: https://edition.cnn.com/politics" in direct.lower(), direct

    applied = ok(mesh, GATEWAY_CNN + VIRTUAL_SERVICE_CNN + ORIGINATE_TLS_CNN, tmp_path)
    for line in ("Gateway/default/istio-egressgateway", "DestinationRule/default/egressgateway-for-cnn",
                 "VirtualService/default/direct-cnn-through-egress-gateway",
                 "DestinationRule/default/originate-tls-for-edition-cnn-com"):
        assert line in applied, applied
    mesh.wait_synced()
    through = ok(mesh, CURL_CNN, tmp_path)
    assert status_lines(through) == ["200"], through  # TLS originated by the gateway: no 301

    log = ok(mesh, GATEWAY_LOG_CNN, tmp_path)  # the gateway's log has the request line
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    [entry] = [e for e in entries if e.get("path") == "/politics"]
    assert (entry["method"], entry["authority"], entry["status"]) == ("GET", "edition.cnn.com", 200), entry
    assert entry["upstream_cluster"].startswith("outbound|443||edition.cnn.com"), entry

    # the hop to the gateway was the mesh's mutual TLS: the gateway counted it, and refuses anything else
    stats = gateway_stats(mesh)["gateway_mtls"]
    assert stats["mtls_accepted"] >= 1, stats
    port = egressgw.ports(mesh.base)[0]
    assert plaintext_answer(port, "edition.cnn.com") == b""
    refused = tls_without_client_certificate(port, "edition.cnn.com")
    assert refused.startswith("refused") or refused == "answered: ", refused
    after = gateway_stats(mesh)["gateway_mtls"]
    assert after["plaintext_refused"] == stats["plaintext_refused"] + 1, after
    assert after["handshake_failed"] + after["no_identity_refused"] > stats["handshake_failed"], after

    ok(mesh, CLEANUP_CNN, tmp_path)
    mesh.wait_synced()
    again = ok(mesh, CURL_CNN, tmp_path)  # the ServiceEntry is gone too: sleep goes straight out again
    assert status_lines(again) == ["301", "200"], again


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the task's own openssl is not installed")
def test_mutual_tls_origination_with_an_egress_gateway(mesh: RunningMesh, tmp_path: Path) -> None:
    ok(mesh, BEFORE_YOU_BEGIN + CERTIFICATES + MUTUAL_TLS_SERVER, tmp_path)
    out = ok(mesh, CLIENT_CREDENTIAL + GATEWAY_NGINX + VIRTUAL_SERVICE_NGINX + ORIGINATE_MTLS_NGINX, tmp_path)
    assert "secret/client-credential created" in out, out
    assert "DestinationRule/istio-system/originate-mtls-for-nginx created" in out, out
    mesh.wait_synced()
    page = ok(mesh, CURL_NGINX, tmp_path)
    assert page.startswith("<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>"), page
    log = ok(mesh, GATEWAY_LOG_NGINX, tmp_path)
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(e.get("authority") == "my-nginx.mesh-external.svc.cluster.local" and e.get("status") == 200
               for e in entries), log
    # nginx verified the gateway's client certificate: its own log has the request, answered 200
    _, out, err = bash(mesh, "meshkit logs my-nginx-0.mesh-external", tmp_path)
    assert '"GET / HTTP/1.1" 200 615' in out + err, out + err

    # Istio reads a gateway's credentialName in the gateway's namespace: without the Secret there, the
    # gateway has no client certificate and nginx refuses the handshake: Envoy's 503
    ok(mesh, "meshkit delete secret client-credential -n istio-system\n", tmp_path)
    mesh.wait_synced()
    _, out, err = bash(mesh, CURL_NGINX, tmp_path)
    assert out.startswith("upstream connect error or disconnect/reset before headers"), out + err
    ok(mesh, CLIENT_CREDENTIAL, tmp_path)
    mesh.wait_synced()
    assert ok(mesh, CURL_NGINX, tmp_path).startswith("<!DOCTYPE html>"), "the Secret is back"

    ok(mesh, CLEANUP_NGINX, tmp_path)
    out = ok(mesh, "meshkit get pods -A", tmp_path)
    assert "my-nginx" not in out and "sleep-0" in out, out


def test_an_istio_mutual_server_with_a_credential_name_is_refused(mesh: RunningMesh, tmp_path: Path) -> None:
    with_credential = GATEWAY_CNN.replace("      mode: ISTIO_MUTUAL\n",
                                          "      mode: ISTIO_MUTUAL\n      credentialName: cnn-cert\n", 1)
    code, out, err = bash(mesh, with_credential, tmp_path)
    assert code != 0, out
    assert "ISTIO_MUTUAL TLS cannot have associated credentialName" in err, err
    assert "spec.servers[0].tls" in err, err
    code, out, _ = bash(mesh, "meshkit get gw -A", tmp_path)
    assert "istio-egressgateway" not in out, out  # nothing of the refused file was applied
