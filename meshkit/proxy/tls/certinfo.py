"""What the sidecar knows about its certificates, as plain data (no ``cryptography`` here).

Made by the checks of an issued chain (``verify`` with ``ssl`` in the running sidecar,
``x509`` with ``cryptography`` in the helper, tests and tools), read by the admin ``/certs`` page:

* ``CertificateInfo``: one certificate as the admin ``/certs`` page shows it;
* ``IssuedCertificate``: a checked answer of the CA (leaf serial, validity, and the
  description of every certificate of the chain and of the root bundle).

``CertificateError`` lives here (re-exported by ``meshkit.proxy.tls``) so that every module of
the package, the helper process's included, can raise it without importing anything else.

It must not do: parse or verify certificates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class CertificateError(ValueError):
    """A certificate handed to the sidecar is unusable (wrong key, identity, issuer or validity)."""


# Istio's file-mounted certificate layout (``--tls-dir``, ``static``)
CHAIN_FILE = "cert-chain.pem"
KEY_FILE = "key.pem"
ROOT_FILE = "root-cert.pem"


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """One certificate, as the admin ``/certs`` page lists it (``seconds_left`` is added when shown)."""

    subject: str  # RFC 4514
    issuer: str
    spiffe_id: str | None
    serial: str  # hex
    not_before: str  # ISO 8601, UTC
    not_after: str
    not_after_ts: float  # epoch seconds

    def admin_view(self, now: float) -> dict[str, Any]:
        return {
            "subject": self.subject, "issuer": self.issuer, "spiffe_id": self.spiffe_id,
            "serial": self.serial, "not_before": self.not_before, "not_after": self.not_after,
            "seconds_left": round(self.not_after_ts - now, 3),
        }


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A chain that passed every check for one identity and key (``verify_issued``, ``check_issued``)."""

    identity: str
    serial: int
    not_before: float  # epoch seconds, of the leaf
    not_after: float
    chain: tuple[CertificateInfo, ...]
    root: tuple[CertificateInfo, ...]
