"""Istio's "Ingress Gateway without TLS Termination" task on the real local mesh, its steps verbatim in bash.

The learner's commands, each as its meshkit form (``kubectl`` -> ``meshkit``): the task's openssl
certificates, ``create secret tls nginx-server-certs``, its ``nginx.conf`` into ``create configmap
nginx-configmap``, the Service and Deployment ``my-nginx`` (image ``nginx``, the Secret and the
ConfigMap mounted) with a sidecar, the task's check of nginx from inside its pod (``kubectl exec ... -c
istio-proxy -- curl -sS -v -k --resolve nginx.example.com:443:127.0.0.1 https://nginx.example.com``:
curl's verbose lines with nginx's certificate, then its page), the Gateway with a ``PASSTHROUGH``
server on 443 and the VirtualService with a ``tls`` route by ``sniHosts``, then the task's own
``curl --resolve ... --cacert example_certs/example.com.crt https://nginx.example.com:$SECURE_INGRESS_PORT``
(real curl from the learner's shell): nginx's certificate (issued for nginx.example.com by the task's root)
reaches curl unopened through the ingress's HTTPS port, and nginx's welcome page comes back.
The cleanup removes the routes, after which the ingress has no filter chain for the name.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import CLI_TIMEOUT, cli_env
from tests.e2e.mesh import RunningMesh, start_mesh

pytestmark = pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("curl")),
                                reason="the task's own openssl and curl are not installed")

CERTIFICATES = """
mkdir example_certs
openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example_certs/example.com.key -out example_certs/example.com.crt
openssl req -out example_certs/nginx.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs/nginx.example.com.key -subj "/CN=nginx.example.com/O=some organization"
openssl x509 -req -sha256 -days 365 -CA example_certs/example.com.crt -CAkey example_certs/example.com.key -set_serial 0 -in example_certs/nginx.example.com.csr -out example_certs/nginx.example.com.crt
"""  # noqa: E501 (the task's lines)

DEPLOY_NGINX = """
meshkit create secret tls nginx-server-certs \\
  --key example_certs/nginx.example.com.key \\
  --cert example_certs/nginx.example.com.crt
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

    server_name nginx.example.com;
    ssl_certificate /etc/nginx-server-certs/tls.crt;
    ssl_certificate_key /etc/nginx-server-certs/tls.key;
  }
}
EOF
meshkit create configmap nginx-configmap --from-file=nginx.conf=./nginx.conf
cat <<EOF | meshkit apply -f -
apiVersion: v1
kind: Service
metadata:
  name: my-nginx
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
spec:
  selector:
    matchLabels:
      run: my-nginx
  replicas: 1
  template:
    metadata:
      labels:
        run: my-nginx
        sidecar.istio.io/inject: "true"
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
      volumes:
      - name: nginx-config
        configMap:
          name: nginx-configmap
      - name: nginx-server-certs
        secret:
          secretName: nginx-server-certs
EOF
"""

# the task's check of nginx from its own pod's proxy container: 127.0.0.1:443 there is nginx
CHECK_FROM_THE_POD = """meshkit exec "$(meshkit get pod -l run=my-nginx -o jsonpath={.items..metadata.name})" -c istio-proxy -- curl -sS -v -k --resolve nginx.example.com:443:127.0.0.1 https://nginx.example.com
"""  # noqa: E501

CONFIGURE_GATEWAY = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
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
      mode: PASSTHROUGH
    hosts:
    - nginx.example.com
EOF
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: nginx
spec:
  hosts:
  - nginx.example.com
  gateways:
  - mygateway
  tls:
  - match:
    - port: 443
      sniHosts:
      - nginx.example.com
    route:
    - destination:
        host: my-nginx
        port:
          number: 443
EOF
"""

# the ingress's address and HTTPS port, as Istio's "Determining the ingress IP and ports" gets them
INGRESS = """
export INGRESS_HOST=$(meshkit get service istio-ingressgateway -n istio-system -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
export SECURE_INGRESS_PORT=$(meshkit get service istio-ingressgateway -n istio-system -o jsonpath='{.spec.ports[?(@.name=="https")].port}')
"""  # noqa: E501
CURL = """curl -v --resolve "nginx.example.com:$SECURE_INGRESS_PORT:$INGRESS_HOST" --cacert example_certs/example.com.crt "https://nginx.example.com:$SECURE_INGRESS_PORT"
"""  # noqa: E501


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("sni-passthrough"), ["none"], spare=2) as running:
        yield running


def bash(mesh: RunningMesh, script: str, cwd: Path) -> tuple[int, str, str]:
    """Run ``script`` in bash in ``cwd`` with ``meshkit`` as this test's CLI (same MESHKIT_HOME and ports)."""
    prelude = f'meshkit() {{ "{sys.executable}" -m meshkit.cli "$@"; }}\n'
    done = subprocess.run(["bash", "-c", prelude + script], env=cli_env(mesh.home, mesh.base), cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT * 4, check=False)
    return done.returncode, done.stdout, done.stderr


def test_ingress_gateway_without_tls_termination(mesh: RunningMesh, tmp_path: Path) -> None:
    code, out, err = bash(mesh, "set -e\n" + CERTIFICATES + DEPLOY_NGINX, tmp_path)
    assert code == 0, out + err
    assert "secret/nginx-server-certs created" in out and "configmap/nginx-configmap created" in out, out
    assert "Deployment/default/my-nginx created" in out, out
    code, out, err = bash(mesh, "meshkit get pods", tmp_path)
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    assert rows == [["my-nginx-0", "2/2", "Running"]], out + err  # with its sidecar
    code, out, err = bash(mesh, CHECK_FROM_THE_POD, tmp_path)
    assert code == 0, out + err
    # what the task shows: curl's lines, nginx's certificate (not verified: -k), then nginx's page
    assert "* Connected to nginx.example.com (127.0.0.1) port 443 (#0)" in err, err
    assert "*  subject: CN=nginx.example.com; O=some organization" in err, err
    assert "*  issuer: O=example Inc.; CN=example.com" in err, err
    assert ("*  SSL certificate verify result: unable to get local issuer certificate (20), "
            "continuing anyway.") in err, err
    assert "> Host: nginx.example.com" in err and "< HTTP/1.1 200 OK" in err, err
    assert "< Server: nginx/" in err, err
    assert "<title>Welcome to nginx!</title>" in out, out

    code, out, err = bash(mesh, "set -e\n" + CONFIGURE_GATEWAY, tmp_path)
    assert code == 0, out + err
    assert "Gateway/default/mygateway created" in out and "VirtualService/default/nginx created" in out, out
    mesh.wait_synced()
    code, out, err = bash(mesh, INGRESS + CURL, tmp_path)
    assert code == 0, err
    # what the task shows: nginx's own certificate, verified against the task's root, then nginx's page
    assert "subject: CN=nginx.example.com; O=some organization" in err, err
    assert "issuer: O=example Inc.; CN=example.com" in err and "SSL certificate verify ok." in err, err
    assert "< HTTP/1.1 200 OK" in err and "< Server: nginx/" in err, err
    assert "<title>Welcome to nginx!</title>" in out, out

    # the ingress carried TLS it never opened: Envoy's TCP line with the SNI, to my-nginx's cluster
    code, out, _ = bash(mesh, "meshkit logs ingressgateway --access --tail 0", tmp_path)
    assert '"requested_server_name":"nginx.example.com"' in out, out
    assert '"upstream_cluster":"outbound|443||my-nginx.default.svc.cluster.local"' in out, out
    # nginx itself served it, seeing curl's request (the sidecar relayed the bytes as TCP)
    code, out, _ = bash(mesh, "meshkit logs my-nginx-0", tmp_path)
    assert '"GET / HTTP/1.1" 200 615' in out, out

    # cleanup, as the task: without the Gateway and the VirtualService no filter chain takes the name
    code, out, err = bash(mesh, "meshkit delete gateway mygateway\nmeshkit delete virtualservice nginx\n",
                          tmp_path)
    assert code == 0, out + err
    mesh.wait_synced()
    code, out, err = bash(mesh, INGRESS + CURL, tmp_path)
    assert code != 0 and "Welcome to nginx!" not in out, out + err
    code, out, err = bash(mesh, """set -e
meshkit delete secret nginx-server-certs
meshkit delete configmap nginx-configmap
meshkit delete service my-nginx
meshkit delete deployment my-nginx
rm ./nginx.conf
rm -rf ./example_certs
""", tmp_path)
    assert code == 0, out + err
    code, out, _ = bash(mesh, "meshkit get pods", tmp_path)
    assert "my-nginx" not in out, out
