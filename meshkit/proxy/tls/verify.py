"""Checking an issued certificate chain with the standard library's ``ssl`` only (no ``cryptography``).

``verify_issued(key_pem, cert_chain_pem, root_pem, identity, now)`` is what the running
sidecar does with the CA's answer before using it. Every check is done by OpenSSL through
documented ``ssl`` calls:

1. ``SSLContext.load_cert_chain`` parses the chain and refuses a key that does not match the
   leaf: the certificate is for the key of our CSR;
2. a TLS handshake in memory (``SSLContext.wrap_bio`` over ``MemoryBIO``s) between the new
   server and client contexts, each requiring the other's certificate and trusting only the
   root bundle: the chain is issued by the bundle and valid now (OpenSSL's verification,
   exactly as a peer will do it);
3. the verified leaf as ``ssl`` decodes it (``SSLObject.getpeercert()``): its only URI SAN is
   our identity, and its validity (``cert_time_to_seconds``) and serial for the admin page;
4. ``SSLContext.get_ca_certs()`` decodes the root bundle (and intermediates) for the admin page.

``cert_time_to_seconds`` is ``ssl.cert_time_to_seconds`` without ``time.strptime``: the standard
library's imports ``_strptime`` and ``calendar`` (their modules and compiled patterns stay in the
sidecar's memory for good) to read one fixed format.

Returns the ``IssuedCertificate`` and the two ready contexts. ``CertificateError`` says what is
wrong, in the words of ``x509.check_issued`` (its in-process twin, used by tests and tools).

It must not do: hold state or open sockets.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from typing import Any

from meshkit.proxy.tls.certinfo import CertificateError, CertificateInfo, IssuedCertificate
from meshkit.proxy.tls.contexts import build_contexts

PEM_CERT = "-----BEGIN CERTIFICATE-----"
HANDSHAKE_ROUNDS = 20  # a TLS 1.3 mutual handshake needs 3-4 rounds
X509_V_ERR_CERT_NOT_YET_VALID = 9
X509_V_ERR_CERT_HAS_EXPIRED = 10

# ssl's long attribute names -> RFC 4514 short names (as cryptography's rfc4514_string prints them)
_SHORT_NAMES = {
    "commonName": "CN", "localityName": "L", "stateOrProvinceName": "ST", "organizationName": "O",
    "organizationalUnitName": "OU", "countryName": "C", "streetAddress": "STREET",
    "domainComponent": "DC", "userId": "UID",
}


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def cert_time_to_seconds(cert_time: str) -> int:
    """Epoch seconds of a validity time as ``ssl`` decodes it ("May  9 00:00:00 2027 GMT"), the
    value ``ssl.cert_time_to_seconds`` returns; ValueError naming the text otherwise."""
    parts = cert_time[3:].split()
    try:
        if len(parts) != 4 or parts[3] != "GMT":
            raise ValueError
        month = _MONTHS.index(cert_time[:3].title()) + 1
        hour, minute, second = (int(part) for part in parts[1].split(":"))
        moment = datetime(int(parts[2]), month, int(parts[0]), hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise ValueError(f"certificate time {cert_time!r}: expected like 'May  9 00:00:00 2027 GMT'") \
            from None
    return int(moment.timestamp())


def _escape(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;' else ch for ch in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and len(out) > 1:
        out = out[:-1] + "\\ "
    return out


def rfc4514(name: Any) -> str:
    """An ``ssl``-decoded name (tuple of RDNs of (attribute, value) pairs) as an RFC 4514 string."""
    rdns = ["+".join(f"{_SHORT_NAMES.get(attr, attr)}={_escape(value)}" for attr, value in rdn)
            for rdn in name]
    return ",".join(reversed(rdns))


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def describe_decoded(cert: dict[str, Any]) -> CertificateInfo:
    """One certificate as ``ssl`` decodes it, as the admin ``/certs`` page shows it."""
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    not_before = float(cert_time_to_seconds(cert["notBefore"]))
    not_after = float(cert_time_to_seconds(cert["notAfter"]))
    return CertificateInfo(
        subject=rfc4514(cert.get("subject", ())), issuer=rfc4514(cert.get("issuer", ())),
        spiffe_id=next((u for u in uris if u.startswith("spiffe://")), None),
        serial=f"{int(cert['serialNumber'], 16):x}", not_before=_iso(not_before), not_after=_iso(not_after),
        not_after_ts=not_after,
    )


def _ca_certs(pem: str) -> list[dict[str, Any]]:
    """The CA certificates of a PEM bundle, decoded by ``ssl`` (non-CA certificates are skipped)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=pem)
    return list(ctx.get_ca_certs())


def _split_pem(pem: str) -> list[str]:
    return [PEM_CERT + part.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
            for part in pem.split(PEM_CERT)[1:]]


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, Any]:
    """A mutual TLS handshake in memory; returns the server's leaf as the client verified it."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_side=False)
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    pending = [client, server]
    for _ in range(HANDSHAKE_ROUNDS):
        for side in list(pending):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                continue
            pending.remove(side)
        if not pending:
            break
    else:
        raise CertificateError("checking the issued certificate: the TLS handshake in memory did not finish")
    decoded = client.getpeercert()
    if not decoded:
        raise CertificateError("checking the issued certificate: the handshake verified no certificate")
    return decoded


def verify_issued(
    key_pem: str, cert_chain_pem: str, root_pem: str, identity: str | None, now: float
) -> tuple[IssuedCertificate, ssl.SSLContext, ssl.SSLContext]:
    """See the module docstring; returns ``(issued, server_context, client_context)``.

    ``identity`` None (certificate files, ``static``): the leaf's single SPIFFE id is taken.
    """
    chain_pems = _split_pem(cert_chain_pem)
    if not chain_pems:
        raise CertificateError("cert_chain is not PEM (no certificate in it)")
    if not _split_pem(root_pem):
        raise CertificateError("root bundle is not PEM (no certificate in it)")
    try:
        server, client = build_contexts(cert_chain_pem, key_pem, root_pem)
    except CertificateError as exc:
        text = str(exc).lower()
        if "key values mismatch" in text or "key_values_mismatch" in text:
            raise CertificateError("issued certificate is not for the key of our CSR") from None
        raise CertificateError(f"cert_chain is not PEM or the key is unusable ({exc})") from None
    try:
        leaf = _handshake(server, client)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code == X509_V_ERR_CERT_HAS_EXPIRED:
            raise CertificateError(f"issued certificate already expired ({exc.verify_message})") from None
        if exc.verify_code == X509_V_ERR_CERT_NOT_YET_VALID:
            raise CertificateError(f"issued certificate is not valid yet ({exc.verify_message})") from None
        raise CertificateError(
            f"issued certificate does not chain to the root bundle ({exc.verify_message})"
        ) from None
    except ssl.SSLError as exc:
        raise CertificateError(f"issued certificate does not chain to the root bundle ({exc})") from None
    uris = [value for kind, value in leaf.get("subjectAltName", ()) if kind == "URI"]
    if identity is None:
        spiffe = [uri for uri in uris if uri.startswith("spiffe://")]
        if len(spiffe) != 1:
            raise CertificateError("the certificate has no single spiffe:// URI SAN")
        identity = spiffe[0]
    if uris != [identity]:
        raise CertificateError(f"issued certificate names {uris}, expected [{identity}]")
    info = describe_decoded(leaf)
    if info.not_after_ts <= now:
        raise CertificateError(f"issued certificate already expired at {info.not_after}")
    intermediates = [c for pem in chain_pems[1:] for c in _ca_certs(pem)]
    issued = IssuedCertificate(
        identity=identity, serial=int(leaf["serialNumber"], 16),
        not_before=float(cert_time_to_seconds(leaf["notBefore"])), not_after=info.not_after_ts,
        chain=(info, *(describe_decoded(c) for c in intermediates)),
        root=tuple(describe_decoded(c) for pem in _split_pem(root_pem) for c in _ca_certs(pem)),
    )
    return issued, server, client
