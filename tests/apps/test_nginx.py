"""The ``nginx`` image's stand-in as a real process: the pod's nginx.conf and mounted files, real TLS
clients; nginx's pages, headers and its refusals (no client certificate, plain HTTP on the TLS port,
a config nginx would refuse)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.apps.processes import AppProcesses

HOST = "my-nginx.mesh-external.svc.cluster.local"
CONF = """events {
}
http {
  server {
    listen 443 ssl;
    root /usr/share/nginx/html;
    index index.html;
    server_name HOST;
    ssl_certificate /etc/nginx-server-certs/tls.crt;
    ssl_certificate_key /etc/nginx-server-certs/tls.key;
    ssl_client_certificate /etc/nginx-ca-certs/example.com.crt;
    ssl_verify_client on;
  }
}
""".replace("HOST", HOST)


def _client_certificate(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    """A client certificate as the task's openssl makes it (no extensions): (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.example.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(ca_key, hashes.SHA256()))
    return pem(cert), key_pem(key)


def _pod(root: Path, conf: str) -> tuple[str, str, str]:
    """Write the pod's files as the runtime mounts them; (CA PEM, client cert PEM, client key PEM)."""
    ca, ca_key = issue_ca("example.com")
    cert, key = issue_server([HOST], ca, ca_key)
    client, client_key = _client_certificate(ca, ca_key)
    for path, text in {"etc/nginx/nginx.conf": conf, "etc/nginx-server-certs/tls.crt": pem(cert),
                       "etc/nginx-server-certs/tls.key": key_pem(key),
                       "etc/nginx-ca-certs/example.com.crt": pem(ca)}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return pem(ca), client, client_key


def _get(port: int, context: ssl.SSLContext | None, path: str = "/", method: str = "GET"
         ) -> tuple[int, dict[str, str], str]:
    """One request (``Connection: close``) over TLS with SNI ``HOST`` (or plain): status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = context.wrap_socket(raw, server_hostname=HOST) if context is not None else raw
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    if not head:
        raise ConnectionError("closed without an answer")
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _client(ca_pem: str, cert: tuple[str, str] | None, tmp: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem)
    if cert is not None:
        (tmp / "c.crt").write_text(cert[0])
        (tmp / "c.key").write_text(cert[1])
        context.load_cert_chain(tmp / "c.crt", tmp / "c.key")
    return context


def test_mutual_tls_as_the_task_configures_it(processes: AppProcesses, tmp_path: Path) -> None:
    root = tmp_path / "pod"
    ca, cert, key = _pod(root, CONF)
    nginx = processes.launch("nginx", "--root", str(root), "--listen-port", "443")
    status, headers, body = _get(nginx.port, _client(ca, (cert, key), tmp_path))
    assert status == 200 and "<title>Welcome to nginx!</title>" in body, body
    assert headers["Server"].startswith("nginx/") and headers["Content-Type"] == "text/html"
    # without a client certificate: nginx's 400 page
    status, headers, body = _get(nginx.port, _client(ca, None, tmp_path))
    assert status == 400 and "<head><title>400 No required SSL certificate was sent</title></head>" in body
    assert "<center><h1>400 Bad Request</h1></center>" in body and headers["Server"].startswith("nginx/")
    # a missing file is nginx's 404 page; HEAD has no body; POST to static files is 405
    assert _get(nginx.port, _client(ca, (cert, key), tmp_path), "/nothing.html")[0] == 404
    assert _get(nginx.port, _client(ca, (cert, key), tmp_path), "/", "POST")[0] == 405
    assert _get(nginx.port, _client(ca, (cert, key), tmp_path), "/50x.html")[0] == 200
    # plain HTTP on the TLS port
    status, _, body = _get(nginx.port, None)
    assert status == 400 and "The plain HTTP request was sent to HTTPS port" in body
    # a certificate from another CA fails the handshake
    other_ca, other_key = issue_ca("other")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(nginx.port, _client(ca, _client_certificate(other_ca, other_key), tmp_path))


def test_without_a_config_it_is_the_images_default_server(processes: AppProcesses, tmp_path: Path) -> None:
    nginx = processes.launch("nginx", "--listen-port", "80")
    status, headers, body = _get(nginx.port, None)
    assert status == 200 and "Welcome to nginx!" in body and headers["Server"].startswith("nginx/")


@pytest.mark.parametrize(("conf", "port", "message"), [
    (CONF.replace("ssl_verify_client on;", "proxy_pass http://x;"), "443",
     'nginx: [emerg] unknown directive "proxy_pass" in /etc/nginx/nginx.conf:12'),
    (CONF, "80",
     "no server in /etc/nginx/nginx.conf listens on 80, the container's port (it listens on 443)"),
    (CONF.replace("tls.crt", "missing.crt"), "443",
     'nginx: [emerg] cannot load certificate "/etc/nginx-server-certs/missing.crt"'),
])
def test_a_config_nginx_refuses_stops_it_with_nginx_words(tmp_path: Path, conf: str, port: str,
                                                           message: str) -> None:
    root = tmp_path / "pod"
    _pod(root, conf)
    done = subprocess.run([sys.executable, "-m", "meshkit.apps", "nginx", "--port", "0", "--root", str(root),
                           "--listen-port", port], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and message in done.stderr, done.stderr


def test_it_runs_without_aiohttp(processes: AppProcesses) -> None:
    nginx = processes.launch("nginx")
    with open(f"/proc/{nginx.process.pid}/maps", encoding="utf-8") as maps:
        assert "aiohttp" not in maps.read()  # its C parser would be mapped had it been imported
