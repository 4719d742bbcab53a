"""What the security pieces cost on this machine (medians; a few seconds in all).

Key generation (EC P-256, the choice, vs RSA-2048), CSR build, CA signing, a full rotation
(key + CSR + sign + both SSL contexts), a new mTLS connection on 127.0.0.1 vs plain TCP (with
uvloop when installed, as the sidecar runs), peer-identity parsing vs the cache, and one
AuthorizationPolicy evaluation. Run::

    .venv/bin/python benchmarks/security_costs.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.filters.authz import compile_authz
from meshkit.proxy.http import Headers, Request
from meshkit.proxy.tls import CertificateManager, peer_identity
from meshkit.proxy.tls.x509 import LocalCertificateManager, build_csr, generate_key, identity_from_der

ALICE = "spiffe://cluster.local/ns/default/sa/alice"
BOB = "spiffe://cluster.local/ns/default/sa/bob"


def median_us(fn: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def issue(ca: CertificateAuthority, identity: str) -> CertificateManager:
    manager = LocalCertificateManager(identity)
    manager.rotate(ca.sign_csr(manager.new_csr(), identity), ca.root_pem)
    return manager


async def connections(ca: CertificateAuthority, rounds: int) -> tuple[float, float]:
    """Median µs for connect + one line echoed, mTLS and plain, interleaved."""
    alice, bob = issue(ca, ALICE), issue(ca, BOB)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    tls_server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=bob.server_context)
    plain_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    targets = (
        (tls_server.sockets[0].getsockname()[1], alice.client_context, []),
        (plain_server.sockets[0].getsockname()[1], None, []),
    )
    for _ in range(rounds):
        for port, context, samples in targets:
            start = time.perf_counter()
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="" if context else None
            )
            writer.write(b"x\n")
            await reader.readline()
            samples.append((time.perf_counter() - start) * 1e6)
            if context is not None:
                assert peer_identity(writer.get_extra_info("ssl_object")) == BOB
            writer.close()
    tls_server.close()
    plain_server.close()
    return statistics.median(targets[0][2]), statistics.median(targets[1][2])


def run(coro: Coroutine[Any, Any, tuple[float, float]]) -> tuple[float, float]:
    try:
        import uvloop  # noqa: PLC0415 - optional, as in the sidecar

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main() -> None:
    ec_us = median_us(lambda: ec.generate_private_key(ec.SECP256R1()), 200)
    print(f"keygen EC P-256          {ec_us:10.0f} us")
    rsa_us = median_us(lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), 10)
    print(f"keygen RSA-2048          {rsa_us:10.0f} us")
    with tempfile.TemporaryDirectory() as tmp:
        ca = CertificateAuthority.open(tmp)
        key = generate_key()
        csr = build_csr(key, ALICE)
        print(f"CSR build                {median_us(lambda: build_csr(key, ALICE), 200):10.0f} us")
        print(f"CA sign_csr              {median_us(lambda: ca.sign_csr(csr, ALICE), 200):10.0f} us")
        print(f"rotation (key..contexts) {median_us(lambda: issue(ca, ALICE), 30):10.0f} us")
        tls_us, plain_us = run(connections(ca, 200))
        print(f"new mTLS conn + 1 line   {tls_us:10.0f} us   (plain TCP: {plain_us:.0f} us)")
        leaf = issue(ca, ALICE).current
        assert leaf is not None
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pem.encode())
        der = cert.public_bytes(serialization.Encoding.DER)
        parse_us = median_us(lambda: identity_from_der.__wrapped__(der), 500)
        print(f"peer id parse (uncached) {parse_us:10.1f} us")
        identity_from_der(der)
        print(f"peer id (cached)         {median_us(lambda: identity_from_der(der), 500):10.2f} us")

    policies = compile_authz(
        {
            "deny": [{"name": "default/deny-admin", "rules": [{"to": [{"paths": ["/admin*"]}]}]}],
            "allow": [{"name": "default/viewer", "rules": [
                {"from": [{"principals": ["cluster.local/ns/default/sa/productpage"]}],
                 "to": [{"methods": ["GET"], "paths": ["/reviews/*"]}]},
                {"when": [{"key": "request.headers[x-canary]", "values": ["yes"]}]},
            ]}],
        },
        port=9080,
    )
    assert policies is not None
    request = Request("GET", "/reviews/1?x=2", "reviews:9080", Headers([("x-canary", "no")]),
                      peer_identity="spiffe://cluster.local/ns/default/sa/productpage")
    assert policies.evaluate(request).allowed
    print(f"authz evaluate (2 pol.)  {median_us(lambda: policies.evaluate(request), 2000):10.2f} us")


if __name__ == "__main__":
    main()
