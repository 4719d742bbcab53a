"""The mesh's certificate authority: a root, workload certificate signing, bootstrap tokens.

What it does:

* keeps a root CA in a state directory (``root-cert.pem``, ``root-key.pem``; the directory is
  0700 and key files 0600), self-signed on first use or provided by the user, reloaded on restart;
* signs a sidecar's CSR into a short-lived workload certificate whose only URI SAN is the
  workload's SPIFFE identity ``spiffe://cluster.local/ns/<ns>/sa/<sa>`` (istiod's job);
* issues the control plane's own server certificate (DNS SANs) for its TLS listener on 15012
  (``meshkit.control.serving_tls``), so sidecars verify the control plane against the mesh root;
* authenticates the caller of the signing endpoint. In local mode every sidecar is started
  with a bootstrap token bound to its identity (stored as SHA-256 only, compared in constant
  time), so a sidecar can only get a certificate for ITS identity. Kubernetes will plug a
  TokenReview authenticator into the same ``CallerAuthenticator`` seam.

Key type: EC P-256 (ECDSA with SHA-256) for the root and the workload keys. Generating a P-256
key takes well under a millisecond while RSA-2048 takes tens of milliseconds: every sidecar
makes a fresh key at start and at every rotation, often dozens at once on a 2-core Binder
box. P-256 handshakes are also smaller and cheaper, and Istio supports the same choice
(``ECC_SIGNATURE_ALGORITHM=ECDSA``). A user-provided root may be RSA (>= 2048 bits) or EC.

It does not serve HTTP: the control plane's API (``meshkit.control.api``) calls
``SigningService.sign`` for ``POST /api/v1/ca/sign`` and maps ``CaError.status`` to the
HTTP status.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

TRUST_DOMAIN = "cluster.local"
DEFAULT_TTL = timedelta(hours=24)
MIN_TTL = timedelta(seconds=1)
MAX_TTL = timedelta(days=90)
CLOCK_SKEW = timedelta(minutes=1)  # not-before is backdated by this much (capped at the TTL)
ROOT_VALIDITY = timedelta(days=3650)

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
TOKENS_FILE = "tokens.json"

# A DNS-label-like namespace and service account, as Kubernetes allows them.
_NAME = r"[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?"
_SPIFFE_RE = re.compile(rf"^spiffe://(?P<td>{_NAME})/ns/(?P<ns>{_NAME})/sa/(?P<sa>{_NAME})$")

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CaError(Exception):
    """A refused CA request; ``status`` is the HTTP status the API should answer with."""

    status = 400


class AuthenticationFailed(CaError):
    status = 401


class IdentityMismatch(CaError):
    status = 403


def spiffe_identity(namespace: str, service_account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    identity = f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
    return validate_identity(identity)


def validate_identity(identity: str) -> str:
    """Return ``identity`` if it is a SPIFFE id of the mesh's shape, else raise CaError."""
    match = _SPIFFE_RE.match(identity) if isinstance(identity, str) else None
    if match is None:
        raise CaError(
            f"identity {identity!r} is not a SPIFFE id of the form "
            f"'spiffe://{TRUST_DOMAIN}/ns/<namespace>/sa/<service-account>'"
        )
    if match["td"] != TRUST_DOMAIN:
        raise CaError(f"identity {identity!r}: trust domain {match['td']!r} is not {TRUST_DOMAIN!r}")
    return identity


_DURATION_RE = re.compile(r"^\s*(?P<n>\d+(\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_ttl(text: str, where: str = "--cert-ttl") -> timedelta:
    """``"30s"``, ``"5m"``, ``"24h"``, ``"7d"`` (a bare number is seconds) -> a workload TTL.

    Raises CaError naming ``where`` for bad syntax or a TTL outside [1 s, 90 days].
    """
    match = _DURATION_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise CaError(f"{where} {text!r}: expected a duration such as 30s, 5m, 24h or 7d")
    ttl = timedelta(seconds=float(match["n"]) * _UNITS[match["unit"] or "s"])
    if not MIN_TTL <= ttl <= MAX_TTL:
        low, high = int(MIN_TTL.total_seconds()), MAX_TTL.days
        raise CaError(f"{where} {text!r}: must be between {low}s and {high}d")
    return ttl


# --------------------------------------------------------------------------- files


def _secure_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte (never world-readable, even briefly)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ensure_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s had mode %o; tightening to 0600", path, mode)
        os.chmod(path, 0o600)


# --------------------------------------------------------------------------- keys


def _check_key_strength(key: object, what: str) -> None:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise CaError(f"{what}: RSA key of {key.key_size} bits is too weak (need >= 2048)")
        return
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CaError(f"{what}: EC curve {key.curve.name} is not supported (use P-256 or P-384)")
        return
    raise CaError(f"{what}: unsupported key type {type(key).__name__} (use EC P-256/P-384 or RSA >= 2048)")


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _new_root(now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
            x509.NameAttribute(NameOID.COMMON_NAME, "meshkit root CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _check_root(cert: x509.Certificate, key: Any, now: datetime) -> None:
    """A user-provided root must be a CA certificate, match its key and still be valid."""
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaError(f"root key: unsupported key type {type(key).__name__}")
    _check_key_strength(key, "root key")
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise CaError("root key does not match the root certificate's public key")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        subject = cert.subject.rfc4514_string()
        raise CaError(f"root certificate {subject!r} is not a CA (needs basicConstraints CA:TRUE)")
    if cert.not_valid_after_utc <= now:
        raise CaError(f"root certificate expired at {cert.not_valid_after_utc.isoformat()}")


# --------------------------------------------------------------------------- the CA


class CertificateAuthority:
    """The root and the signing of workload certificates. Construct with ``open``."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: SigningKey) -> None:
        self.directory = directory
        self._cert = cert
        self._key = key
        self._root_pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        root_cert_pem: str | bytes | None = None,
        root_key_pem: str | bytes | None = None,
    ) -> CertificateAuthority:
        """Load the root from ``directory``, or store the given one, or create a self-signed one.

        A root given here replaces the stored one (certificates issued by the old root stop
        verifying once sidecars get the new bundle).
        """
        path = Path(directory)
        _secure_dir(path)
        cert_file, key_file = path / ROOT_CERT_FILE, path / ROOT_KEY_FILE
        now = datetime.now(UTC)
        if (root_cert_pem is None) != (root_key_pem is None):
            raise CaError("a user-provided root needs both root_cert_pem and root_key_pem")
        if root_cert_pem is not None and root_key_pem is not None:
            cert, key = cls._parse_root(_bytes(root_cert_pem), _bytes(root_key_pem), "provided root")
            _check_root(cert, key, now)
            if cert_file.exists() and cert_file.read_bytes() != cert.public_bytes(serialization.Encoding.PEM):
                log.warning("replacing the root CA in %s: certificates of the old root stop verifying", path)
            cls._store(cert_file, key_file, cert, key)
        elif cert_file.exists() or key_file.exists():
            if not (cert_file.exists() and key_file.exists()):
                raise CaError(
                    f"{path}: found only one of {ROOT_CERT_FILE} and {ROOT_KEY_FILE}; restore or remove it"
                )
            _ensure_private(key_file)
            cert, key = cls._parse_root(cert_file.read_bytes(), key_file.read_bytes(), str(path))
            _check_root(cert, key, now)
        else:
            cert, key = _new_root(now)
            cls._store(cert_file, key_file, cert, key)
            log.info("created a self-signed EC P-256 root CA in %s", path)
        return cls(path, cert, key)

    @staticmethod
    def _parse_root(cert_pem: bytes, key_pem: bytes, where: str) -> tuple[x509.Certificate, SigningKey]:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CaError(f"{where}: root certificate is not a PEM X.509 certificate ({exc})") from exc
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CaError(f"{where}: root key is not an unencrypted PEM private key ({exc})") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CaError(f"{where}: unsupported root key type {type(key).__name__}")
        return cert, key

    @staticmethod
    def _store(cert_file: Path, key_file: Path, cert: x509.Certificate, key: SigningKey) -> None:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(key_file, key_pem)
        _write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))

    @property
    def root_pem(self) -> str:
        """The trust bundle every sidecar verifies peers against."""
        return self._root_pem

    @property
    def root_certificate(self) -> x509.Certificate:
        return self._cert

    def sign_csr(
        self,
        csr_pem: str | bytes,
        identity: str,
        ttl: timedelta = DEFAULT_TTL,
        *,
        now: datetime | None = None,
    ) -> str:
        """Sign ``csr_pem`` for ``identity`` (which the caller has already authenticated).

        The CSR must carry exactly one URI SAN equal to ``identity``. The certificate gets
        that SPIFFE id as its only SAN (critical, empty subject, like Istio's), key usage
        digitalSignature+keyEncipherment, EKU serverAuth+clientAuth, a random serial and a
        validity of ``ttl`` from ``now`` (default: the current time), with not-before
        backdated by up to one minute for clock skew. ``now`` exists so that tests can issue
        an already-expired certificate; the API never sets it.
        """
        validate_identity(identity)
        if not MIN_TTL <= ttl <= MAX_TTL:
            low, high = MIN_TTL.total_seconds(), MAX_TTL.total_seconds()
            raise CaError(f"ttl {ttl.total_seconds():g}s is outside [{low:g}s, {high:g}s]")
        csr = _load_csr(csr_pem)
        requested = _csr_uris(csr)
        if requested != [identity]:
            shown = ", ".join(requested) if requested else "none"
            raise IdentityMismatch(
                f"CSR asks for URI SAN(s) [{shown}] but the caller is authenticated as {identity}; "
                "a workload may only request a certificate for its own identity"
            )
        issued_at = now or datetime.now(UTC)
        not_after = min(issued_at + ttl, self._cert.not_valid_after_utc)
        not_before = issued_at - min(CLOCK_SKEW, ttl)
        if not_after <= not_before:
            expiry = self._cert.not_valid_after_utc.isoformat()
            raise CaError(f"the root expires at {expiry}; rotate the root first")
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)])
        cert = self._leaf(csr.public_key(), san, not_before, not_after, client_auth=True)
        log.info("issued %s serial=%x until %s", identity, cert.serial_number, not_after.isoformat())
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue_serving(self, dns_names: Iterable[str], ttl: timedelta = DEFAULT_TTL) -> tuple[str, str]:
        """A fresh key and a server certificate for ``dns_names`` (its DNS SANs), signed by the root:
        the control plane's own TLS certificate for its 15012 listener, as istiod's
        ``istiod.istio-system.svc`` certificate. Returns ``(cert_pem, key_pem)``."""
        names = [name for name in dict.fromkeys(dns_names) if name]
        if not names:
            raise CaError("a serving certificate needs at least one DNS name")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        not_after = min(now + ttl, self._cert.not_valid_after_utc)
        san = x509.SubjectAlternativeName([x509.DNSName(name) for name in names])
        cert = self._leaf(key.public_key(), san, now - CLOCK_SKEW, not_after, client_auth=False)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()

    def _leaf(self, public_key: Any, san: x509.SubjectAlternativeName, not_before: datetime,
              not_after: datetime, *, client_auth: bool) -> x509.Certificate:
        """A leaf certificate under the root: empty subject, ``san`` critical (as Istio's), key usage
        digitalSignature+keyEncipherment, serverAuth (+clientAuth for workloads), random serial."""
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(san, critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        return builder.sign(self._key, hashes.SHA256())


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _load_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(_bytes(csr_pem))
    except ValueError as exc:
        raise CaError(f"csr: not a PEM certificate signing request ({exc})") from exc
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError):
        valid = False
    if not valid:
        raise CaError("csr: its signature does not verify (the requester must prove it holds the key)")
    _check_key_strength(csr.public_key(), "csr key")
    return csr


def _csr_uris(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = list(san)
    if any(not isinstance(name, x509.UniformResourceIdentifier) for name in names):
        others = [str(n.value) for n in names if not isinstance(n, x509.UniformResourceIdentifier)]
        raise CaError(f"csr: only a URI SAN is allowed, found also {others}")
    return [name.value for name in names]


# --------------------------------------------------------------------------- caller authentication


class CallerAuthenticator(Protocol):
    """Turns the credential a sidecar presents into the identity it may get a certificate for.

    Local mode: ``BootstrapTokens``. Kubernetes (later): a TokenReview of the pod's projected
    service-account token, yielding ``spiffe://cluster.local/ns/<ns>/sa/<sa>``.
    """

    async def authenticate(self, credential: str) -> str | None: ...


class BootstrapTokens:
    """Per-workload bootstrap tokens, persisted as SHA-256 digests (0600), compared in constant time.

    Tokens are 256-bit random values, so an unsalted hash is enough: it cannot be reversed
    and a leaked tokens file does not let anyone sign in.
    """

    def __init__(self, path: Path, entries: list[tuple[bytes, str]]) -> None:
        self.path = path
        self._entries = entries  # (sha256 digest, identity)

    @classmethod
    def open(cls, path: Path | str) -> BootstrapTokens:
        file = Path(path)
        _secure_dir(file.parent)
        if not file.exists():
            return cls(file, [])
        _ensure_private(file)
        try:
            doc = json.loads(file.read_text())
            entries = [(bytes.fromhex(e["sha256"]), str(e["identity"])) for e in doc["tokens"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CaError(f"{file}: corrupt bootstrap token file ({exc}); delete it, reissue tokens") from exc
        return cls(file, entries)

    def issue_token(self, identity: str) -> str:
        """A new token for ``identity`` (several may exist, e.g. one per replica)."""
        validate_identity(identity)
        token = secrets.token_urlsafe(32)
        self._entries.append((hashlib.sha256(token.encode()).digest(), identity))
        self._save()
        return token

    @staticmethod
    def digest(token: str) -> str:
        """The hex SHA-256 a token is stored as: what a runtime may keep to revoke that one token."""
        return hashlib.sha256(token.encode()).hexdigest()

    def revoke_digests(self, digests: Iterable[str]) -> int:
        """Forget the tokens with these digests (``digest(token)``); returns how many there were."""
        gone = {bytes.fromhex(d) for d in digests}
        before = len(self._entries)
        self._entries = [e for e in self._entries if e[0] not in gone]
        if len(self._entries) != before:
            self._save()
        return before - len(self._entries)

    def identity_for_token(self, token: str) -> str | None:
        if not isinstance(token, str) or not token:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for known, identity in self._entries:  # no early exit: time does not depend on the position
            if hmac.compare_digest(known, digest):
                found = identity
        return found

    def revoke(self, identity: str) -> int:
        """Forget every token of ``identity``; returns how many there were."""
        before = len(self._entries)
        self._entries = [e for e in self._entries if e[1] != identity]
        if len(self._entries) != before:
            self._save()
        return before - len(self._entries)

    async def authenticate(self, credential: str) -> str | None:
        return self.identity_for_token(credential)

    def _save(self) -> None:
        doc = {"version": 1, "tokens": [{"sha256": d.hex(), "identity": i} for d, i in self._entries]}
        _write_private(self.path, json.dumps(doc, indent=1).encode())


# --------------------------------------------------------------------------- what the API calls


@dataclass(frozen=True, slots=True)
class SignResult:
    cert_chain: str  # the workload certificate (PEM); intermediates would follow it
    root: str  # the trust bundle (PEM)

    def to_dict(self) -> dict[str, str]:
        return {"cert_chain": self.cert_chain, "root": self.root}


class SigningService:
    """``POST /api/v1/ca/sign {"csr": PEM, "token": str}`` -> ``{"cert_chain": PEM, "root": PEM}``.

    The API handler passes the parsed JSON body to ``sign`` and answers ``CaError.status``
    with ``{"error": str(exc)}`` when it raises (400 bad request, 401 unknown token,
    403 CSR for another identity).
    """

    def __init__(
        self, ca: CertificateAuthority, authenticator: CallerAuthenticator, *, ttl: timedelta = DEFAULT_TTL
    ) -> None:
        self.ca = ca
        self.authenticator = authenticator
        self.ttl = ttl

    @classmethod
    def open_local(
        cls, directory: Path | str, *, ttl: timedelta = DEFAULT_TTL
    ) -> tuple[SigningService, BootstrapTokens]:
        """The local-mode CA in ``directory`` (e.g. ``$MESHKIT_HOME/control/ca``) with its token store."""
        path = Path(directory)
        ca = CertificateAuthority.open(path)
        tokens = BootstrapTokens.open(path / TOKENS_FILE)
        return cls(ca, tokens, ttl=ttl), tokens

    async def sign(self, body: object) -> SignResult:
        if not isinstance(body, dict):
            raise CaError("ca/sign: body must be a JSON object {\"csr\": ..., \"token\": ...}")
        csr, token = body.get("csr"), body.get("token")
        if not isinstance(csr, str) or not csr:
            raise CaError("ca/sign: field 'csr' must be a PEM string")
        if not isinstance(token, str) or not token:
            raise AuthenticationFailed("ca/sign: field 'token' is missing")
        identity = await self.authenticator.authenticate(token)
        if identity is None:
            raise AuthenticationFailed("ca/sign: unknown or revoked token")
        cert = self.ca.sign_csr(csr, identity, self.ttl)
        return SignResult(cert_chain=cert, root=self.ca.root_pem)
