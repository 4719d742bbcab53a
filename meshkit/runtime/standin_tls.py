"""The external stand-ins' HTTPS: a local CA of their own and one server certificate for their hosts.

Istio's "Egress TLS Origination" task has the sidecar open TLS to ``edition.cnn.com:443`` and check
its certificate. The local mesh's stand-ins (``meshkit deploy external``) therefore serve HTTPS
too, with a certificate for ``httpbin.org``, ``edition.cnn.com`` and ``www.google.com`` signed by a
CA made for them, as a public CA signs the real hosts' certificates. It is NOT the mesh's CA (the
workload identities' root): the sidecars trust it only for TLS origination (snapshot
``egress.ca_pem``), and a client outside the mesh trusts it with ``--cacert <home>/external-tls/ca.pem``.

Files, in ``<MESHKIT_HOME>/external-tls/`` (made once, kept across ``up``/``down``, remade when
expired or unreadable): ``ca.pem``, ``ca-key.pem``, ``cert.pem`` (server certificate + CA),
``key.pem``.

It must not do: serve anything, or touch the mesh's own CA (``meshkit.control.ca``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DIRECTORY = "external-tls"
VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class StandinTls:
    ca_pem: str
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshkit external stand-ins"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue_ca(common_name: str = "meshkit stand-in CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue_server(hosts: Sequence[str], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
                 ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate naming ``hosts`` (DNS SANs), signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _write(path: Path, text: str, private: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def _usable(files: StandinTls, hosts: Sequence[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        files.key_file.read_bytes()
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=1)
    return fresh and set(names.get_values_for_type(x509.DNSName)) >= set(hosts)


def ensure(home: Path, hosts: Sequence[str]) -> StandinTls:
    """The stand-ins' CA and server certificate under ``home``, made when missing or stale."""
    directory = home / DIRECTORY
    files = StandinTls("", directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    if not (_usable(files, hosts) and files.ca_file.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = issue_ca()
        cert, key = issue_server(list(hosts), ca, ca_key)
        _write(directory / "ca-key.pem", key_pem(ca_key), private=True)
        _write(files.ca_file, pem(ca))
        _write(files.key_file, key_pem(key), private=True)
        _write(files.cert_file, pem(cert) + pem(ca))
    return StandinTls(files.ca_file.read_text(), files.ca_file, files.cert_file, files.key_file)
