"""Real mutual TLS over real sockets on 127.0.0.1 with CA-issued certificates."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.tls import (
    CertificateError,
    CertificateManager,
    PeerIdentityError,
    check_peer_identity,
    peer_identity,
)
from meshkit.proxy.tls.sniff import looks_like_tls
from meshkit.proxy.tls.x509 import identity_from_der

from .conftest import ALICE, BOB, MALLORY, InboundSidecar, Issue, ask, issue_with

STALE = datetime.now(UTC) - timedelta(hours=2)  # certificates issued "then" with a 1 h TTL are expired


async def _refused(port: int, context: ssl.SSLContext) -> bool:
    """True when the server will not talk to us (handshake error, reset or EOF instead of an answer)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ssl.SSLError, ConnectionError):
        return True
    try:
        return await ask(reader, writer) == ""
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        writer.close()


async def test_mutual_tls_handshake_with_ca_issued_certificates(issue: Issue) -> None:
    alice, bob = issue(ALICE), issue(BOB)
    async with InboundSidecar(bob) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=alice.client_context)
        assert await ask(reader, writer) == f"mutual_tls {ALICE} {alice.current.serial:x}"  # type: ignore[union-attr]
        ssl_object = writer.get_extra_info("ssl_object")
        assert check_peer_identity(ssl_object, [BOB]) == BOB
        assert ssl_object.version() in ("TLSv1.3", "TLSv1.2")
        writer.close()
    assert server.accepted == [("mutual_tls", ALICE)]


async def test_server_certificate_from_another_ca_is_rejected(
    issue: Issue, other_ca: CertificateAuthority
) -> None:
    alice = issue(ALICE)
    impostor = issue_with(other_ca, BOB)
    async with InboundSidecar(impostor) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await asyncio.open_connection("127.0.0.1", server.port, ssl=alice.client_context)
    assert server.accepted == []


async def test_client_certificate_from_another_ca_is_rejected(
    issue: Issue, other_ca: CertificateAuthority
) -> None:
    bob = issue(BOB)
    intruder = issue_with(other_ca, ALICE)  # right name, wrong CA
    async with InboundSidecar(bob) as server:
        assert await _refused(server.port, intruder.client_context)
        for _ in range(100):  # the server side notices asynchronously (TLS 1.3 client auth)
            if server.refused:
                break
            await asyncio.sleep(0.02)
    assert server.accepted == []
    assert server.refused and "handshake failed" in server.refused[0]


async def test_client_without_a_certificate_is_rejected(issue: Issue, ca: CertificateAuthority) -> None:
    bob = issue(BOB)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=ca.root_pem)
    async with InboundSidecar(bob) as server:
        assert await _refused(server.port, anonymous)
    assert server.accepted == []


async def test_expired_certificates_are_rejected_both_ways(issue: Issue) -> None:
    alice, bob = issue(ALICE), issue(BOB)
    old_alice, old_bob = issue(ALICE, now=STALE), issue(BOB, now=STALE)
    assert old_bob.current is not None and old_bob.current.not_after < datetime.now(UTC).timestamp()
    async with InboundSidecar(old_bob) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
            await asyncio.open_connection("127.0.0.1", server.port, ssl=alice.client_context)
    async with InboundSidecar(bob) as server:
        assert await _refused(server.port, old_alice.client_context)
    assert server.accepted == []


async def test_short_ttl_certificate_really_expires(issue: Issue) -> None:
    """Issued for 1 s: works now, refused once it has expired (waits about 2 s)."""
    bob = issue(BOB)
    brief = issue(ALICE, ttl=timedelta(seconds=1))
    async with InboundSidecar(bob) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=brief.client_context)
        assert (await ask(reader, writer)).startswith("mutual_tls")
        writer.close()
        assert brief.current is not None
        await asyncio.sleep(max(0.0, brief.current.not_after - datetime.now(UTC).timestamp()) + 1.1)
        assert await _refused(server.port, brief.client_context)


async def test_wrong_spiffe_identity_is_detected_by_the_client(issue: Issue) -> None:
    """Mallory has a perfectly valid mesh certificate; the client expected Bob."""
    alice, mallory = issue(ALICE), issue(MALLORY)
    async with InboundSidecar(mallory) as server:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=alice.client_context)
        ssl_object = writer.get_extra_info("ssl_object")
        assert peer_identity(ssl_object) == MALLORY
        with pytest.raises(PeerIdentityError) as err:
            check_peer_identity(ssl_object, [BOB])
        assert MALLORY in str(err.value) and BOB in str(err.value)
        writer.close()


def _self_signed(uris: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(hours=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_identity_from_der_parses_once_per_certificate() -> None:
    der = _self_signed([ALICE])
    identity_from_der.cache_clear()
    assert identity_from_der(der) == ALICE
    assert identity_from_der(der) == ALICE
    info = identity_from_der.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    assert identity_from_der(_self_signed([])) is None
    assert identity_from_der(_self_signed(["https://example.org"])) is None
    assert identity_from_der(_self_signed([ALICE, BOB])) is None  # ambiguous: refuse
    assert identity_from_der(b"garbage") is None
    assert peer_identity(None) is None


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"\x16\x03\x01\x02\x00", True),  # TLS 1.0 record version in a modern ClientHello
        (b"\x16\x03\x03", True),
        (b"\x16\x03\x04", True),
        (b"\x16\x03\x00", True),
        (b"\x16\x03\x05", False),
        (b"\x16\x02\x01", False),
        (b"\x17\x03\x03", False),  # application data, not a handshake
        (b"GET / HTTP/1.1\r\n", False),
        (b"\x16\x03", False),  # too short to tell
        (b"", False),
    ],
)
def test_looks_like_tls(first: bytes, expected: bool) -> None:
    assert looks_like_tls(first) is expected


def test_manager_refuses_use_before_a_certificate() -> None:
    manager = CertificateManager(ALICE)
    assert manager.needs_rotation(0.0)
    with pytest.raises(CertificateError, match="no certificate"):
        _ = manager.server_context
    with pytest.raises(CertificateError, match="not a SPIFFE id"):
        CertificateManager("alice")
