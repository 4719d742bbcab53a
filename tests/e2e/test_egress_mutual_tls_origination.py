"""Istio's "Egress TLS Origination" task, section "Mutual TLS origination for egress traffic", verbatim
in bash.

The steps it takes from "Egress Gateway TLS Origination" (generate the certificates with openssl,
deploy a mutual TLS server: namespace ``mesh-external``, ``create -n mesh-external secret tls
nginx-server-certs`` and ``secret generic nginx-ca-certs``, its nginx.conf with ``ssl_verify_client
on`` into ``nginx-configmap``, the Service and Deployment ``my-nginx`` with image ``nginx``), then
its own: ``create secret generic client-credential`` (tls.key, tls.crt, ca.crt) in sleep's namespace,
the DestinationRule with a ``workloadSelector``, ``tls.mode: MUTUAL``, ``credentialName`` and ``sni``,
and sleep's plain ``curl -sS http://my-nginx.mesh-external.svc.cluster.local`` (port 443) getting
nginx's welcome page: sleep's sidecar originated mutual TLS with the client certificate. Each
``kubectl`` is ``meshkit``; sleep.yaml is Istio's (tests/config/istio_samples). Every byte stays on
127.0.0.1. my-nginx runs without a sidecar (mesh-external is not labelled for injection), so its
Service's endpoint is the nginx itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import CLI_TIMEOUT, cli_env
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the task's own openssl is not installed")

BEFORE_YOU_BEGIN = f"""
meshkit apply -f {SAMPLES / "sleep.yaml"}
"""

# "Egress Gateway TLS Origination": Generate client and server certificates and keys
CERTIFICATES = """
openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example.com.key -out example.com.crt
openssl req -out my-nginx.mesh-external.svc.cluster.local.csr -newkey rsa:2048 -nodes -keyout my-nginx.mesh-external.svc.cluster.local.key -subj "/CN=my-nginx.mesh-external.svc.cluster.local/O=some organization"
openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 0 -in my-nginx.mesh-external.svc.cluster.local.csr -out my-nginx.mesh-external.svc.cluster.local.crt
openssl req -out client.example.com.csr -newkey rsa:2048 -nodes -keyout client.example.com.key -subj "/CN=client.example.com/O=client organization"
openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 1 -in client.example.com.csr -out client.example.com.crt
"""  # noqa: E501 (the task's lines)

# "Egress Gateway TLS Origination": Deploy a mutual TLS server
MUTUAL_TLS_SERVER = """
meshkit create namespace mesh-external
meshkit create -n mesh-external secret tls nginx-server-certs --key my-nginx.mesh-external.svc.cluster.local.key --cert my-nginx.mesh-external.svc.cluster.local.crt
meshkit create -n mesh-external secret generic nginx-ca-certs --from-file=example.com.crt
cat <<\\EOF > ./nginx.conf
events {
}

http {
  log_format main '$remote_addr - $remote_user [$time_local]  $status '
  '"$request" $body_bytes_sent "$http_referer" '
  '"$http_user_agent" "$http_x_forwarded_for"';
  access_log /var/log/nginx/access.log main;
  error_log  /var/log/nginx/error.log;

  server {
    listen 443 ssl;

    root /usr/share/nginx/html;
    index index.html;

    server_name my-nginx.mesh-external.svc.cluster.local;
    ssl_certificate /etc/nginx-server-certs/tls.crt;
    ssl_certificate_key /etc/nginx-server-certs/tls.key;
    ssl_client_certificate /etc/nginx-ca-certs/example.com.crt;
    ssl_verify_client on;
  }
}
EOF
meshkit create configmap nginx-configmap -n mesh-external --from-file=nginx.conf=./nginx.conf
meshkit apply -f - <<EOF
apiVersion: v1
kind: Service
metadata:
  name: my-nginx
  namespace: mesh-external
  labels:
    run: my-nginx
spec:
  ports:
  - port: 443
    protocol: TCP
  selector:
    run: my-nginx
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-nginx
  namespace: mesh-external
spec:
  selector:
    matchLabels:
      run: my-nginx
  replicas: 1
  template:
    metadata:
      labels:
        run: my-nginx
    spec:
      containers:
      - name: my-nginx
        image: nginx
        ports:
        - containerPort: 443
        volumeMounts:
        - name: nginx-config
          mountPath: /etc/nginx
          readOnly: true
        - name: nginx-server-certs
          mountPath: /etc/nginx-server-certs
          readOnly: true
        - name: nginx-ca-certs
          mountPath: /etc/nginx-ca-certs
          readOnly: true
      volumes:
      - name: nginx-config
        configMap:
          name: nginx-configmap
      - name: nginx-server-certs
        secret:
          secretName: nginx-server-certs
      - name: nginx-ca-certs
        secret:
          secretName: nginx-ca-certs
EOF
"""  # noqa: E501

CLIENT_CREDENTIAL = """
meshkit create secret generic client-credential --from-file=tls.key=client.example.com.key \\
  --from-file=tls.crt=client.example.com.crt --from-file=ca.crt=example.com.crt
"""

DESTINATION_RULE = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: originate-mtls-for-nginx
spec:
  workloadSelector:
    matchLabels:
      app: sleep
  host: my-nginx.mesh-external.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: MUTUAL
        credentialName: client-credential # this must match the secret created earlier to hold client certs, and works only when DR has a workloadSelector
        sni: my-nginx.mesh-external.svc.cluster.local # this is optional
EOF
"""  # noqa: E501

CURL = """meshkit exec "$(meshkit get pod -l app=sleep -o jsonpath={.items..metadata.name})" -c sleep -- curl -sS http://my-nginx.mesh-external.svc.cluster.local:443
"""  # noqa: E501
LOGS = "meshkit logs -l app=sleep -c istio-proxy | grep 'my-nginx.mesh-external.svc.cluster.local'\n"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("mutual-origination"), ["none"], spare=3) as running:
        yield running


def bash(mesh: RunningMesh, script: str, cwd: Path) -> tuple[int, str, str]:
    """Run ``script`` in bash in ``cwd`` with ``meshkit`` as this test's CLI (same MESHKIT_HOME and ports)."""
    prelude = f'meshkit() {{ "{sys.executable}" -m meshkit.cli "$@"; }}\n'
    done = subprocess.run(["bash", "-c", prelude + script], env=cli_env(mesh.home, mesh.base), cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT * 4, check=False)
    return done.returncode, done.stdout, done.stderr


def test_mutual_tls_origination_for_egress_traffic(mesh: RunningMesh, tmp_path: Path) -> None:
    code, out, err = bash(mesh, "set -e\n" + BEFORE_YOU_BEGIN + CERTIFICATES + MUTUAL_TLS_SERVER, tmp_path)
    assert code == 0, out + err
    for line in ("namespace/mesh-external created", "secret/nginx-server-certs created",
                 "secret/nginx-ca-certs created", "configmap/nginx-configmap created",
                 "Deployment/mesh-external/my-nginx created"):
        assert line in out, out
    code, out, _ = bash(mesh, "meshkit get pods -A", tmp_path)
    rows = {line.split()[1]: line.split()[2] for line in out.splitlines()[1:]}
    assert rows["my-nginx-0"] == "1/1" and rows["sleep-0"] == "2/2", out  # mesh-external: no sidecar

    # without origination, sleep's plain HTTP reaches nginx's TLS port: nginx says so, as it would
    code, out, err = bash(mesh, CURL, tmp_path)
    assert "400 The plain HTTP request was sent to HTTPS port" in out, out + err

    code, out, err = bash(mesh, "set -e\n" + CLIENT_CREDENTIAL + DESTINATION_RULE, tmp_path)
    assert code == 0, out + err
    assert "secret/client-credential created" in out, out
    assert "DestinationRule/default/originate-mtls-for-nginx created" in out, out
    mesh.wait_synced()
    code, out, err = bash(mesh, CURL, tmp_path)
    assert code == 0, err
    assert out.startswith("<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>"), out
    code, out, _ = bash(mesh, LOGS, tmp_path)
    assert '"authority":"my-nginx.mesh-external.svc.cluster.local:443"' in out and '"status":200' in out, out
    # nginx verified the client certificate: its access log has the request, answered 200
    code, out, err = bash(mesh, "meshkit logs my-nginx-0.mesh-external", tmp_path)
    assert '"GET / HTTP/1.1" 200 615' in out + err, out + err

    # Istio 1.20+ reads a sidecar's credentialName in the client's own namespace: moved to mesh-external,
    # sleep's sidecar has neither the client certificate nor the CA that signed nginx's: Envoy's 503
    code, out, err = bash(mesh, """set -e
meshkit delete secret client-credential
meshkit create -n mesh-external secret generic client-credential --from-file=tls.key=client.example.com.key \\
  --from-file=tls.crt=client.example.com.crt --from-file=ca.crt=example.com.crt
""", tmp_path)
    assert code == 0, out + err
    mesh.wait_synced()
    code, out, err = bash(mesh, CURL, tmp_path)
    assert out.startswith("upstream connect error or disconnect/reset before headers"), out + err

    # cleanup, as the task (client-credential is in mesh-external now; the task's `kubectl delete
    # serviceentry originate-mtls-for-nginx` names an object this version of the task never creates)
    code, out, err = bash(mesh, """set -e
meshkit delete secret nginx-server-certs nginx-ca-certs -n mesh-external
meshkit delete secret client-credential -n mesh-external
meshkit delete configmap nginx-configmap -n mesh-external
meshkit delete service my-nginx -n mesh-external
meshkit delete deployment my-nginx -n mesh-external
meshkit delete namespace mesh-external
meshkit delete destinationrule originate-mtls-for-nginx
rm example.com.crt example.com.key my-nginx.mesh-external.svc.cluster.local.crt my-nginx.mesh-external.svc.cluster.local.key my-nginx.mesh-external.svc.cluster.local.csr client.example.com.crt client.example.com.csr client.example.com.key
rm ./nginx.conf
""", tmp_path)  # noqa: E501
    assert code == 0, out + err
    code, out, _ = bash(mesh, "meshkit get pods -A", tmp_path)
    assert "my-nginx" not in out and "sleep-0" in out, out
