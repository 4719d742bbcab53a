"""Bootstrap tokens and the signing service the control plane's API calls."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from meshkit.control.ca import (
    TOKENS_FILE,
    AuthenticationFailed,
    BootstrapTokens,
    CaError,
    IdentityMismatch,
    SigningService,
)
from meshkit.proxy.tls.x509 import build_csr, generate_key

from .conftest import ALICE, BOB


def test_tokens_map_to_their_identity_and_are_stored_hashed(tmp_path: Path) -> None:
    path = tmp_path / "ca" / TOKENS_FILE
    tokens = BootstrapTokens.open(path)
    alice, bob = tokens.issue_token(ALICE), tokens.issue_token(BOB)
    assert alice != bob and len(alice) >= 40
    assert tokens.identity_for_token(alice) == ALICE
    assert tokens.identity_for_token(bob) == BOB
    assert tokens.identity_for_token(alice[:-1] + ("A" if alice[-1] != "A" else "B")) is None
    assert tokens.identity_for_token("") is None

    raw = path.read_text()
    assert alice not in raw and bob not in raw  # only digests on disk
    assert len(json.loads(raw)["tokens"]) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    reloaded = BootstrapTokens.open(path)
    assert reloaded.identity_for_token(alice) == ALICE
    assert reloaded.revoke(ALICE) == 1
    assert reloaded.identity_for_token(alice) is None
    assert BootstrapTokens.open(path).identity_for_token(alice) is None  # revocation persisted
    assert BootstrapTokens.open(path).identity_for_token(bob) == BOB


def test_tokens_refuse_bad_identities_and_corrupt_files(tmp_path: Path) -> None:
    tokens = BootstrapTokens.open(tmp_path / TOKENS_FILE)
    with pytest.raises(CaError, match="not a SPIFFE id"):
        tokens.issue_token("alice")
    (tmp_path / TOKENS_FILE).write_text("{not json")
    with pytest.raises(CaError, match="corrupt bootstrap token file"):
        BootstrapTokens.open(tmp_path / TOKENS_FILE)


async def test_signing_service_signs_only_the_callers_identity(tmp_path: Path) -> None:
    service, tokens = SigningService.open_local(tmp_path / "ca")
    token = tokens.issue_token(ALICE)

    result = await service.sign({"csr": build_csr(generate_key(), ALICE), "token": token})
    cert = x509.load_pem_x509_certificate(result.cert_chain.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ALICE]
    assert result.root == service.ca.root_pem
    assert set(result.to_dict()) == {"cert_chain", "root"}

    # Alice's token cannot buy Bob's certificate.
    with pytest.raises(IdentityMismatch) as err:
        await service.sign({"csr": build_csr(generate_key(), BOB), "token": token})
    assert err.value.status == 403 and BOB in str(err.value) and ALICE in str(err.value)

    with pytest.raises(AuthenticationFailed) as unknown:
        await service.sign({"csr": build_csr(generate_key(), ALICE), "token": "guessed"})
    assert unknown.value.status == 401
    with pytest.raises(AuthenticationFailed, match="'token' is missing"):
        await service.sign({"csr": build_csr(generate_key(), ALICE)})
    with pytest.raises(CaError, match="'csr' must be a PEM string") as bad:
        await service.sign({"token": token})
    assert bad.value.status == 400
    with pytest.raises(CaError, match="must be a JSON object"):
        await service.sign(["csr", "token"])
