"""Shared pieces for the security tests: a real CA in a temp dir and sidecar certificates it issued."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.tls import CertificateManager

ALICE = "spiffe://cluster.local/ns/default/sa/alice"
BOB = "spiffe://cluster.local/ns/default/sa/bob"
MALLORY = "spiffe://cluster.local/ns/evil/sa/mallory"

Issue = Callable[..., CertificateManager]


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "ca")


@pytest.fixture
def other_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "other-ca")


def issue_with(
    authority: CertificateAuthority,
    identity: str,
    ttl: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    *,
    check_validity: bool = True,
) -> CertificateManager:
    """A sidecar's CertificateManager holding a certificate the given CA signed for ``identity``."""
    manager = CertificateManager(identity)
    cert = authority.sign_csr(manager.new_csr(), identity, ttl, now=now)
    # An already-expired certificate is refused by rotate(); tests that need one install it
    # with a 'now' inside its validity window.
    moment = None if check_validity or now is None else now.timestamp()
    manager.rotate(cert, authority.root_pem, now=moment)
    return manager


@pytest.fixture
def issue(ca: CertificateAuthority) -> Issue:
    def make(
        identity: str, ttl: timedelta = timedelta(hours=1), now: datetime | None = None
    ) -> CertificateManager:
        return issue_with(ca, identity, ttl, now, check_validity=now is None)

    return make
