"""The certificate authority: root persistence, key permissions, what a workload certificate contains."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.control.ca import (
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    CaError,
    CertificateAuthority,
    IdentityMismatch,
    spiffe_identity,
    validate_identity,
)
from meshkit.proxy.tls.x509 import build_csr, generate_key

from .conftest import ALICE, BOB


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _csr(identity: str | None, key: object = None, *, extra_dns: str | None = None) -> str:
    key = key or generate_key()
    names: list[x509.GeneralName] = []
    if identity:
        names.append(x509.UniformResourceIdentifier(identity))
    if extra_dns:
        names.append(x509.DNSName(extra_dns))
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_root_is_created_with_private_permissions_and_reloaded(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "ca"
    first = CertificateAuthority.open(directory)
    assert _mode(directory) == 0o700
    assert _mode(directory / ROOT_KEY_FILE) == 0o600
    assert _mode(directory / ROOT_CERT_FILE) == 0o600
    root = first.root_certificate
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    again = CertificateAuthority.open(directory)
    assert again.root_pem == first.root_pem
    # A certificate signed before the "restart" verifies against the reloaded root.
    cert = x509.load_pem_x509_certificate(first.sign_csr(build_csr(generate_key(), ALICE), ALICE).encode())
    cert.verify_directly_issued_by(again.root_certificate)


def test_loose_key_permissions_are_tightened_on_reload(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    CertificateAuthority.open(directory)
    os.chmod(directory / ROOT_KEY_FILE, 0o644)
    os.chmod(directory, 0o755)
    CertificateAuthority.open(directory)
    assert _mode(directory / ROOT_KEY_FILE) == 0o600
    assert _mode(directory) == 0o700


def test_half_a_root_on_disk_is_an_error(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    CertificateAuthority.open(directory)
    (directory / ROOT_KEY_FILE).unlink()
    with pytest.raises(CaError, match="found only one of"):
        CertificateAuthority.open(directory)


def _rsa_root(*, ca: bool = True, expired: bool = False) -> tuple[str, str, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp root")])
    now = datetime.now(UTC) - (timedelta(days=60) if expired else timedelta(0))
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, key


def test_user_provided_root_is_stored_and_signs(tmp_path: Path) -> None:
    cert_pem, key_pem, _ = _rsa_root()
    authority = CertificateAuthority.open(tmp_path / "ca", root_cert_pem=cert_pem, root_key_pem=key_pem)
    assert authority.root_pem.strip() == cert_pem.strip()
    assert _mode(tmp_path / "ca" / ROOT_KEY_FILE) == 0o600
    leaf = x509.load_pem_x509_certificate(authority.sign_csr(build_csr(generate_key(), BOB), BOB).encode())
    leaf.verify_directly_issued_by(authority.root_certificate)
    assert leaf.issuer.rfc4514_string() == "CN=corp root"
    # reloaded without arguments: the user's root stays
    assert CertificateAuthority.open(tmp_path / "ca").root_pem == authority.root_pem


def test_user_provided_root_is_checked(tmp_path: Path) -> None:
    cert_pem, _, _ = _rsa_root()
    _, other_key_pem, _ = _rsa_root()
    with pytest.raises(CaError, match="does not match"):
        CertificateAuthority.open(tmp_path / "a", root_cert_pem=cert_pem, root_key_pem=other_key_pem)
    leaf_pem, leaf_key_pem, _ = _rsa_root(ca=False)
    with pytest.raises(CaError, match="is not a CA"):
        CertificateAuthority.open(tmp_path / "b", root_cert_pem=leaf_pem, root_key_pem=leaf_key_pem)
    with pytest.raises(CaError, match="needs both"):
        CertificateAuthority.open(tmp_path / "c", root_cert_pem=cert_pem)
    with pytest.raises(CaError, match=r"not a PEM X\.509"):
        CertificateAuthority.open(tmp_path / "d", root_cert_pem="junk", root_key_pem=other_key_pem)


def test_an_expired_user_provided_root_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    cert_pem, key_pem, _ = _rsa_root(expired=True)
    with pytest.raises(CaError, match=r"root certificate expired at 20"):
        CertificateAuthority.open(tmp_path / "ca", root_cert_pem=cert_pem, root_key_pem=key_pem)
    assert not (tmp_path / "ca" / ROOT_CERT_FILE).exists() and not (tmp_path / "ca" / ROOT_KEY_FILE).exists()
    # A stored root that has expired since is refused at the next start, not used to sign.
    valid_pem, valid_key, _ = _rsa_root()
    CertificateAuthority.open(tmp_path / "ca2", root_cert_pem=valid_pem, root_key_pem=valid_key)
    (tmp_path / "ca2" / ROOT_CERT_FILE).write_text(cert_pem)
    (tmp_path / "ca2" / ROOT_KEY_FILE).write_text(key_pem)
    with pytest.raises(CaError, match="root certificate expired at"):
        CertificateAuthority.open(tmp_path / "ca2")


def test_workload_certificate_contents(ca: CertificateAuthority) -> None:
    key = generate_key()
    before = datetime.now(UTC)
    pem = ca.sign_csr(build_csr(key, ALICE), ALICE, timedelta(hours=24))
    cert = x509.load_pem_x509_certificate(pem.encode())

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier(ALICE)]
    assert san.critical  # empty subject => SAN must be critical (RFC 5280)
    assert cert.subject == x509.Name([])
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    assert not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # validity: 24 h from now, not-before backdated about a minute for clock skew
    lifetime_end = cert.not_valid_after_utc - before
    assert timedelta(hours=23, minutes=59) < lifetime_end <= timedelta(hours=24, seconds=5)
    backdate = before - cert.not_valid_before_utc
    assert timedelta(seconds=50) < backdate <= timedelta(minutes=1, seconds=1)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    cert.verify_directly_issued_by(ca.root_certificate)


def test_serials_are_random_and_short_ttls_allowed(ca: CertificateAuthority) -> None:
    serials = set()
    for _ in range(5):
        cert = x509.load_pem_x509_certificate(
            ca.sign_csr(build_csr(generate_key(), ALICE), ALICE, timedelta(seconds=2)).encode()
        )
        serials.add(cert.serial_number)
        assert cert.serial_number.bit_length() > 64
        # a 2 s certificate is backdated by at most its TTL, not a whole minute
        assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(seconds=5)
    assert len(serials) == 5


def test_csr_for_a_foreign_identity_is_refused_naming_both(ca: CertificateAuthority) -> None:
    with pytest.raises(IdentityMismatch) as err:
        ca.sign_csr(build_csr(generate_key(), BOB), ALICE)
    assert BOB in str(err.value) and ALICE in str(err.value)
    assert err.value.status == 403


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (lambda: _csr(None), r"URI SAN\(s\) \[none\]"),
        (lambda: _csr(ALICE, extra_dns="alice.default.svc"), "only a URI SAN is allowed"),
        (lambda: _csr(f"{ALICE}-x"), "alice-x"),
        (lambda: "not a csr", "not a PEM certificate signing request"),
        (lambda: _csr(ALICE, rsa.generate_private_key(public_exponent=65537, key_size=1024)), "too weak"),
    ],
)
def test_bad_csrs_are_refused(ca: CertificateAuthority, csr: object, message: str) -> None:
    with pytest.raises(CaError, match=message):
        ca.sign_csr(csr(), ALICE)  # type: ignore[operator]


def test_csr_with_a_broken_signature_is_refused(ca: CertificateAuthority) -> None:
    pem = _csr(ALICE)
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x55  # flip bits inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CaError, match="signature does not verify"):
        ca.sign_csr(tampered, ALICE)


def test_ttl_and_identity_bounds(ca: CertificateAuthority) -> None:
    csr = build_csr(generate_key(), ALICE)
    with pytest.raises(CaError, match="outside"):
        ca.sign_csr(csr, ALICE, timedelta(milliseconds=10))
    with pytest.raises(CaError, match="outside"):
        ca.sign_csr(csr, ALICE, timedelta(days=365))
    with pytest.raises(CaError, match="not a SPIFFE id"):
        ca.sign_csr(csr, "spiffe://cluster.local/ns/default")
    with pytest.raises(CaError, match="trust domain"):
        validate_identity("spiffe://example.org/ns/default/sa/alice")
    assert spiffe_identity("default", "alice") == ALICE
    with pytest.raises(CaError):
        spiffe_identity("Default", "alice")  # Kubernetes names are lower-case
