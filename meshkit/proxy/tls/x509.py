"""The X.509 side of the sidecar's mTLS, with ``cryptography``: keys, CSRs and certificate checks.

The long-running sidecar never imports this module (``cryptography`` costs ~10 MiB of RSS in
every process that loads it). It runs in the short-lived helper process
(``python -m meshkit.proxy.tls.csr_helper``), and in-process where memory does not matter
(tests and tools). import-linter lets only ``csr_helper`` import it inside ``meshkit``:

* ``generate_key`` / ``key_pem`` / ``build_csr``: a fresh EC P-256 key and a CSR whose only
  URI SAN is the workload's SPIFFE id;
* ``check_issued``: is the CA's answer for our key and identity, issued by the root bundle and
  currently valid? Returns the plain-data ``IssuedCertificate`` (``certinfo``);
* ``identity_from_der``: the single SPIFFE id of a DER certificate;
* ``LocalCertificateManager``: a ``CertificateManager`` that makes its key and CSR in this
  process (``new_csr``) and checks the CA's answer with ``cryptography`` (``rotate``).

It must not do: open sockets or build ``ssl`` contexts itself (that is ``contexts``).
"""

from __future__ import annotations

import functools
import itertools
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit.proxy.tls.certinfo import (
    CertificateError,
    CertificateInfo,
    IssuedCertificate,
)
from meshkit.proxy.tls.contexts import build_contexts
from meshkit.proxy.tls.manager import CertificateBundle, CertificateManager


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """The key as unencrypted PKCS#8 PEM (what ``ssl.SSLContext.load_cert_chain`` reads)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def build_csr(key: ec.EllipticCurvePrivateKey, identity: str) -> str:
    """A PEM CSR with an empty subject and ``identity`` as its only (URI) SAN."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


@functools.lru_cache(maxsize=512)
def identity_from_der(der: bytes) -> str | None:
    """The SPIFFE id in a DER certificate's URI SAN; None if it has none or several (cached by bytes)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    spiffe = [uri for uri in _uri_sans(cert) if uri.startswith("spiffe://")]
    return spiffe[0] if len(spiffe) == 1 else None


def describe(cert: x509.Certificate) -> CertificateInfo:
    """One certificate as the admin ``/certs`` page shows it."""
    uris = _uri_sans(cert)
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
        spiffe_id=next((u for u in uris if u.startswith("spiffe://")), None),
        serial=f"{cert.serial_number:x}", not_before=not_before.isoformat(), not_after=not_after.isoformat(),
        not_after_ts=not_after.timestamp(),
    )


def _load_chain(pem: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise CertificateError(f"cert_chain is not PEM ({exc})") from exc
    if not chain:
        raise CertificateError("cert_chain is empty")
    return chain


def _issued_by_bundle(chain: list[x509.Certificate], roots: list[x509.Certificate]) -> bool:
    def issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):  # wrong issuer name, key type or signature
            return False
        return True

    if not all(issued(child, parent) for child, parent in itertools.pairwise(chain)):
        return False
    return any(issued(chain[-1], root) for root in roots)


def _load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("expected an EC private key (meshkit uses P-256)")
    return key


def check_issued(
    key: str, cert_chain_pem: str, root_pem: str, identity: str, now: float
) -> IssuedCertificate:
    """Check the CA's answer: our key, our identity (only URI SAN), issued by the root bundle, not expired.

    ``key`` is the PEM private key the CSR was made with. Raises ``CertificateError`` saying
    what is wrong.
    """
    private = _load_key(key)
    chain = _load_chain(cert_chain_pem)
    roots = _load_chain(root_pem)
    leaf = chain[0]
    pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*pub) != private.public_key().public_bytes(*pub):
        raise CertificateError("issued certificate is not for the key of our CSR")
    uris = _uri_sans(leaf)
    if uris != [identity]:
        raise CertificateError(f"issued certificate names {uris}, expected [{identity}]")
    if not _issued_by_bundle(chain, roots):
        raise CertificateError("issued certificate does not chain to the root bundle")
    not_after = leaf.not_valid_after_utc
    if not_after.timestamp() <= now:
        raise CertificateError(f"issued certificate already expired at {not_after.isoformat()}")
    return IssuedCertificate(
        identity=identity, serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc.timestamp(), not_after=not_after.timestamp(),
        chain=tuple(describe(c) for c in chain), root=tuple(describe(c) for c in roots),
    )



class LocalCertificateManager(CertificateManager):
    """A ``CertificateManager`` whose key, CSR and checks are made in this process (tests, tools).

    ``new_csr`` then ``rotate`` (or ``install`` for a key made elsewhere); ``now`` is for tests.
    The running sidecar uses the plain ``CertificateManager`` (key from the helper process,
    answer checked with ``ssl``) and never loads this module.
    """

    def new_csr(self) -> str:
        """A fresh key (kept until ``rotate``) and its CSR for this identity."""
        private = generate_key()
        self.expect_key(key_pem(private))
        return build_csr(private, self.identity)

    def rotate(self, cert_chain_pem: str, root_pem: str, *, now: float | None = None) -> CertificateBundle:
        """Check the CA's answer to the last ``new_csr`` with ``cryptography`` and make it current."""
        key = self._require_pending()
        moment = time.time() if now is None else now
        issued = check_issued(key, cert_chain_pem, root_pem, self.identity, moment)
        contexts = build_contexts(cert_chain_pem, key, root_pem)
        return self._publish(cert_chain_pem, root_pem, issued, moment, contexts)

    def install(
        self, key_pem: str, cert_chain_pem: str, root_pem: str, *, now: float | None = None
    ) -> CertificateBundle:
        """Like ``rotate`` for a key made elsewhere (PEM)."""
        self.expect_key(key_pem)
        return self.rotate(cert_chain_pem, root_pem, now=now)
