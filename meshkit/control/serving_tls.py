"""The control plane's TLS listener (istiod's 15012): its certificate, issued by the mesh's own CA.

On Kubernetes, sidecars reach the control plane across the pod network: their CSRs (with the pod's
ServiceAccount token), their snapshots and their ACKs must not travel in plaintext. As istiod does,
the control plane serves them on a TLS port with a certificate for its Service's DNS names, signed
by the mesh root, and sidecars verify it against the root published in each namespace's
``meshkit-ca-root-cert`` ConfigMap (mounted by the injector; ``meshkit.k8s.inject``).

``ServingTls(authority, dns_names, directory)`` keeps one ``ssl.SSLContext`` whose certificate is
re-issued at half its lifetime (``run``): new handshakes get the new certificate, open streams keep
theirs. The key never leaves the control plane's state directory (0700 dir, 0600 files).

It must not: listen (``meshkit.control.server`` adds the listener), or sign anything but its own
certificate (workload CSRs go through ``ca.SigningService``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

from meshkit.control.ca import CaError, CertificateAuthority

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(hours=24)
RETRY_S = 30.0  # after a failed re-issue: the current certificate stays until it works


class ServingTls:
    """See the module docstring."""

    def __init__(self, authority: CertificateAuthority, dns_names: Iterable[str], directory: Path,
                 ttl: timedelta = DEFAULT_TTL) -> None:
        self.authority = authority
        self.dns_names = [name for name in dict.fromkeys(dns_names) if name]
        self.directory = directory
        self.ttl = ttl
        self.issued = 0
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.refresh()

    def refresh(self) -> None:
        """Issue a new certificate and key and load them into ``context`` (for the next handshakes)."""
        cert_pem, key_pem = self.authority.issue_serving(self.dns_names, self.ttl)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        cert_file, key_file = self.directory / "serving-cert.pem", self.directory / "serving-key.pem"
        for path, text in ((cert_file, cert_pem), (key_file, key_pem)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as out:
                out.write(text)
        self.context.load_cert_chain(cert_file, key_file)
        self.issued += 1
        log.info("control plane TLS certificate for %s issued (valid %s)",
                 ", ".join(self.dns_names), self.ttl)

    async def run(self) -> None:
        """Re-issue at half the lifetime, forever (cancel to stop)."""
        delay = self.ttl.total_seconds() / 2
        while True:
            await asyncio.sleep(delay)
            try:
                self.refresh()
                delay = self.ttl.total_seconds() / 2
            except (CaError, OSError, ValueError, ssl.SSLError) as exc:
                log.warning("could not re-issue the control plane's TLS certificate: %s", exc)
                delay = min(RETRY_S, self.ttl.total_seconds() / 4)
