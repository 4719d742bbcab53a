"""Workload certificates from files, for a sidecar with no CA to ask (``--tls-dir DIR``).

Istio's file-mounted layout: ``DIR/cert-chain.pem`` (leaf first), ``DIR/key.pem`` and
``DIR/root-cert.pem``, checked with ``ssl`` alone (``verify``: no ``cryptography`` in the sidecar) and
loaded once at start and never rotated (restart or SIGHUP-reload the
config to change them); meant for static ``--config`` setups such as benchmarks and
offline demos. Offers what ``sidecar.SidecarCertificates`` offers to the listener, the
pool and admin: ``ready``, ``server_context``, ``client_context`` and ``describe()``.

It must not do: talk to a CA or rotate.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

from meshkit.proxy.tls.certinfo import CHAIN_FILE, KEY_FILE, ROOT_FILE, CertificateError
from meshkit.proxy.tls.manager import CertificateManager
from meshkit.proxy.tls.verify import verify_issued


class StaticCertificates:
    """See the module docstring."""

    def __init__(self, manager: CertificateManager) -> None:
        self.manager = manager
        self.rotations = 1

    @classmethod
    def load(cls, directory: Path | str) -> StaticCertificates:
        """Read and check the three files; ``CertificateError`` names the file that is wrong.

        Checked with ``ssl`` alone (``CertificateManager.install_verified``): the sidecar never
        loads ``cryptography``.
        """
        folder = Path(directory)
        texts = {}
        for name in (CHAIN_FILE, KEY_FILE, ROOT_FILE):
            try:
                texts[name] = (folder / name).read_text()
            except OSError as exc:
                raise CertificateError(f"{folder / name}: {exc.strerror or exc}") from None
        if "-----BEGIN" not in texts[KEY_FILE] or "PRIVATE KEY-----" not in texts[KEY_FILE]:
            raise CertificateError(f"{folder / KEY_FILE}: not an unencrypted PEM private key")
        try:  # the identity is the certificate's own: learn it from the first (same) check
            issued, _, _ = verify_issued(
                texts[KEY_FILE], texts[CHAIN_FILE], texts[ROOT_FILE], None, time.time()
            )
        except CertificateError as exc:
            raise CertificateError(f"{folder / CHAIN_FILE}: {exc}") from None
        manager = CertificateManager(issued.identity)
        manager.expect_key(texts[KEY_FILE])
        try:
            manager.install_verified(texts[CHAIN_FILE], texts[ROOT_FILE], now=time.time())
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

