"""A pod's mounted ConfigMaps and Secrets as files, and the TLS port Istio's sniffing would see on an
unnamed port."""

from __future__ import annotations

import base64

from meshkit.config.loader import load_resources
from meshkit.config.registry import Service as RegistryService
from meshkit.config.tls_routes import inbound_protocol
from meshkit.config.volumes import nginx_tls_ports, pod_files, tls_ports
from meshkit.config.workloads import Deployment

CONF = "events {}\nhttp {\n  server {\n    listen 443 ssl; # TLS\n    server_name a;\n  }\n}\n"
OBJECTS = f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: nginx-configmap}}
data:
  nginx.conf: |
{"".join("    " + line + chr(10) for line in CONF.splitlines())}
---
apiVersion: v1
kind: Secret
metadata: {{name: nginx-ca-certs}}
type: Opaque
data: {{example.com.crt: {base64.b64encode(b"CA PEM").decode()}, other: {base64.b64encode(b"x").decode()}}}
---
apiVersion: v1
kind: Service
metadata: {{name: my-nginx}}
spec:
  ports: [{{port: 443, protocol: TCP}}]
  selector: {{run: my-nginx}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: my-nginx}}
spec:
  selector: {{matchLabels: {{run: my-nginx}}}}
  template:
    metadata: {{labels: {{run: my-nginx}}}}
    spec:
      containers:
      - name: my-nginx
        image: nginx
        ports: [{{containerPort: 443}}]
        volumeMounts:
        - {{name: nginx-config, mountPath: /etc/nginx, readOnly: true}}
        - {{name: nginx-ca-certs, mountPath: /etc/nginx-ca-certs/}}
        - {{name: one, mountPath: /etc/ca.pem, subPath: example.com.crt}}
      volumes:
      - {{name: nginx-config, configMap: {{name: nginx-configmap}}}}
      - name: nginx-ca-certs
        secret: {{secretName: nginx-ca-certs, items: [{{key: example.com.crt, path: ca.pem}}]}}
      - {{name: one, secret: {{secretName: nginx-ca-certs}}}}
"""


def _deployment(resources: list) -> Deployment:
    return next(r for r in resources if isinstance(r, Deployment))


def test_every_key_becomes_a_file_under_its_mount_path() -> None:
    resources = load_resources(OBJECTS)
    files, problems = pod_files(_deployment(resources), resources)
    assert problems == []
    assert files == {"/etc/ca.pem": "CA PEM", "/etc/nginx-ca-certs/ca.pem": "CA PEM",
                     "/etc/nginx/nginx.conf": CONF}


def test_a_missing_config_map_or_secret_is_named_unless_optional() -> None:
    resources = [r for r in load_resources(OBJECTS) if r.kind != "Secret"]
    _, problems = pod_files(_deployment(resources), resources)
    mount = "Deployment/default/my-nginx spec.template.spec.containers[0].volumeMounts"
    missing = (': Secret "nginx-ca-certs" not found in namespace default (create it first: the pod '
               "cannot start without it)")
    assert problems == [f"{mount}[1]{missing}", f"{mount}[2]{missing}"]
    optional = load_resources(OBJECTS.replace("secretName: nginx-ca-certs}",
                                              "secretName: gone, optional: true}"))
    assert pod_files(_deployment(optional), optional)[1] == []


def test_an_unnamed_port_where_nginx_listens_with_ssl_is_opaque_tcp_as_istio_sniffs_it() -> None:
    assert nginx_tls_ports(CONF) == {443}
    conf = "server { listen 0.0.0.0:8443 ssl http2; listen 80; #listen 9443 ssl;\n }"
    assert nginx_tls_ports(conf) == {8443}
    resources = load_resources(OBJECTS)
    assert tls_ports(resources, "default", {"run": "my-nginx"}) == {443}
    service = RegistryService("my-nginx", "default", 443)
    assert inbound_protocol(resources, service) == "tcp"
    plain = load_resources(OBJECTS.replace("listen 443 ssl;", "listen 443;"))
    assert inbound_protocol(plain, service) == "http"
    named = load_resources(OBJECTS.replace("[{port: 443, protocol: TCP}]", "[{port: 443, name: https}]")
                           .replace("listen 443 ssl;", "listen 443;"))
    assert inbound_protocol(named, service) == "tcp"  # Istio's HTTPS port: TLS, opaque to the sidecar
