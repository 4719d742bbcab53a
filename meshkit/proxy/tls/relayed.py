"""A ``--concurrency`` worker's workload certificate: the one the first process got from the CA.

The first process of a sidecar (``workers``) keeps the certificate rotation (one CSR per rotation,
as Envoy's SDS is per proxy, not per worker thread) and hands each certificate it installs to its
workers over their pipe: identity, chain, key and root as PEM. ``install`` checks it with ``ssl``
alone (the same ``CertificateManager.install_verified`` as the first process) and swaps it in
whole, so a worker's new connections get the new certificate as the first process's do.

Offers what ``sidecar.SidecarCertificates`` offers to the listener and the pool: ``ready``,
``server_context``, ``client_context`` and ``describe()``.

It must not do: talk to a CA, rotate on its own, or read files.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from meshkit.proxy.tls.certinfo import CertificateError
from meshkit.proxy.tls.manager import CertificateManager


class RelayedCertificates:
    """See the module docstring."""

    def __init__(self) -> None:
        self.manager: CertificateManager | None = None
        self.rotations = 0
        self.last_error: str | None = None

    def install(self, identity: str, chain_pem: str, key_pem: str, root_pem: str) -> int:
        """Check and install one certificate; its serial. ``CertificateError`` if it does not check out
        (the current one keeps serving)."""
        manager = CertificateManager(identity)
        manager.expect_key(key_pem)
        try:
            bundle = manager.install_verified(chain_pem, root_pem, now=time.time())
        except CertificateError as exc:
            self.last_error = str(exc)
            raise
        self.manager = manager  # the atomic swap
        self.rotations += 1
        return bundle.serial

    @property
    def ready(self) -> bool:
        return self.manager is not None and self.manager.current is not None

    @property
    def serial(self) -> int | None:
        current = self.manager.current if self.manager is not None else None
        return current.serial if current is not None else None

    @property
    def server_context(self) -> ssl.SSLContext:
        if self.manager is None:
            raise CertificateError("no workload certificate from the first process yet")
        return self.manager.server_context

    @property
    def client_context(self) -> ssl.SSLContext:
        if self.manager is None:
            raise CertificateError("no workload certificate from the first process yet")
        return self.manager.client_context

    def describe(self, now: float | None = None) -> dict[str, Any]:
        current = self.manager.current if self.manager is not None else None
        if current is None:
            return {"ready": False, "source": "the first process (--concurrency worker)",
                    "last_error": self.last_error}
        return {"identity": current.identity, "ready": True, "serial": f"{current.serial:x}",
                "source": "the first process (--concurrency worker)",
                "certificates_installed": self.rotations,
                "last_error": self.last_error}
