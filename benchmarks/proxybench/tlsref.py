"""TLS references for the benchmarks: a throwaway CA and nginx -> nginx over TLS with client certs.

The CA uses ``cryptography`` directly: the harness measures the proxies, not meshkit's CA. The nginx
pair (``proxy_ssl`` with verification, keep-alive and session reuse) is the reference the mesh path
with mTLS is compared with, by ``mtls_overhead.py`` and ``istio_method.py``. It must not measure
anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .configs import nginx_main
from .processes import Child
from .targets import Stage, Target, start_nginx_config


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class ThrowawayCa:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> ThrowawayCa:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue(self, san: x509.GeneralName, directory: Path, *, chain: str, key_file: str,
              root: str) -> None:
        """A leaf for ``san`` (server+client auth) written as ``chain``, ``key_file``, ``root``."""
        key = _key()
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(hours=12))
                .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / chain).write_bytes(_pem(cert))
        key_path = directory / key_file
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        (directory / root).write_bytes(_pem(self.cert))




def nginx_tls_backend(certs: Path, port: int, upstream_port: int) -> str:
    return f"""    upstream origin {{
        server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {certs}/server.pem;
        ssl_certificate_key {certs}/server-key.pem;
        ssl_client_certificate {certs}/ca.pem;
        ssl_verify_client on;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}"""


def nginx_tls_frontend(certs: Path, port: int, backend_port: int) -> str:
    return f"""    upstream tlsbackend {{
        server 127.0.0.1:{backend_port}; keepalive 64; keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass https://tlsbackend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_ssl_certificate {certs}/client.pem;
            proxy_ssl_certificate_key {certs}/client-key.pem;
            proxy_ssl_trusted_certificate {certs}/ca.pem;
            proxy_ssl_verify on;
            proxy_ssl_name bench-backend;
            proxy_ssl_session_reuse on;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
        }}
    }}"""


def start_nginx_tls_pair(stage: Stage, name: str, upstream_port: int, *,
                         http_probe: bool = True) -> tuple[list[Child], int]:
    """nginx -> (TLS, client certificates) -> nginx -> ``upstream_port``; the children and the front port.

    ``http_probe=False`` waits for the front to accept connections only (an upstream that does not
    answer ``GET /`` with 200, such as httpbin); the caller checks the path it measures."""
    certs = stage.subdir(f"{name}-certs")
    ca = ThrowawayCa.create()
    for dns, chain, key_file in (("bench-backend", "server.pem", "server-key.pem"),
                                 ("bench-frontend", "client.pem", "client-key.pem")):
        ca.issue(x509.DNSName(dns), certs, chain=chain, key_file=key_file, root="ca.pem")
    backend, backend_port = start_nginx_config(
        stage, f"{name}-backend",
        lambda workdir, port: nginx_main(workdir, nginx_tls_backend(certs, port, upstream_port)),
        http_probe=False)  # it only speaks TLS with a client certificate
    frontend, port = start_nginx_config(
        stage, f"{name}-frontend",
        lambda workdir, port: nginx_main(workdir, nginx_tls_frontend(certs, port, backend_port)),
        http_probe=http_probe)
    return [backend, frontend], port


@dataclass
class NginxTlsPair(Target):
    """Two nginx in a row with TLS and client certificates between them (1 worker each)."""

    def start(self, stage: Stage) -> None:
        children, self.port = start_nginx_tls_pair(stage, self.name, stage.upstream_port)
        self.children.extend(children)
        self.verify()
