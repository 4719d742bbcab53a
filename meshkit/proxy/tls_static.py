"""Workload certificates from files, for a sidecar with no CA to ask (``--tls-dir DIR``).

Istio's file-mounted layout: ``DIR/cert-chain.pem`` (leaf first), ``DIR/key.pem`` and
``DIR/root-cert.pem``. Loaded once at start and never rotated (restart or SIGHUP-reload the
config to change them); meant for static ``--config`` setups such as benchmarks and
offline demos. Offers what ``tls_sidecar.SidecarCertificates`` offers to the listener, the
pool and admin: ``ready``, ``server_context``, ``client_context`` and ``describe()``.

It must not do: talk to a CA or rotate.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit.proxy.tls import CertificateError, CertificateManager, identity_from_der

CHAIN_FILE = "cert-chain.pem"
KEY_FILE = "key.pem"
ROOT_FILE = "root-cert.pem"


class StaticCertificates:
    """See the module docstring."""

    def __init__(self, manager: CertificateManager) -> None:
        self.manager = manager
        self.rotations = 1

    @classmethod
    def load(cls, directory: Path | str) -> StaticCertificates:
        """Read and check the three files; ``CertificateError`` names the file that is wrong."""
        folder = Path(directory)
        texts = {}
        for name in (CHAIN_FILE, KEY_FILE, ROOT_FILE):
            try:
                texts[name] = (folder / name).read_text()
            except OSError as exc:
                raise CertificateError(f"{folder / name}: {exc.strerror or exc}") from None
        try:
            key = serialization.load_pem_private_key(texts[KEY_FILE].encode(), password=None)
        except ValueError as exc:
            reason = f"not an unencrypted PEM private key ({exc})"
            raise CertificateError(f"{folder / KEY_FILE}: {reason}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{folder / KEY_FILE}: expected an EC private key (meshkit uses P-256)")
        try:
            leaf = x509.load_pem_x509_certificate(texts[CHAIN_FILE].encode())
        except ValueError as exc:
            raise CertificateError(f"{folder / CHAIN_FILE}: not a PEM certificate ({exc})") from None
        identity = identity_from_der(leaf.public_bytes(serialization.Encoding.DER))
        if identity is None:
            raise CertificateError(f"{folder / CHAIN_FILE}: the certificate has no single spiffe:// URI SAN")
        manager = CertificateManager(identity)
        try:
            manager.install(key, texts[CHAIN_FILE], texts[ROOT_FILE])
        except CertificateError as exc:
            raise CertificateError(f"{folder}: {exc}") from None
        return cls(manager)

    @property
    def ready(self) -> bool:
        return True

    @property
    def server_context(self) -> ssl.SSLContext:
        return self.manager.server_context

    @property
    def client_context(self) -> ssl.SSLContext:
        return self.manager.client_context

    def describe(self, now: float | None = None) -> dict[str, Any]:
        current = self.manager.current
        assert current is not None
        moment = time.time() if now is None else now
        return {
            "identity": self.manager.identity, "ready": True, "source": "files (--tls-dir), never rotated",
            "certificates_issued": self.rotations, "last_error": None,
            "not_after": current.admin_view()["not_after"],
            "seconds_left": round(current.not_after - moment, 3),
            "serial": f"{current.serial:x}",
        }
