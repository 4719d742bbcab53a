"""`meshkit.k8s.kubeconfig` against a real HTTPS server that demands a client certificate.

The test makes a CA, a server certificate for 127.0.0.1 and a client certificate (as kind's
kubeconfig carries them, base64 in ``*-data`` fields), serves a tiny API over TLS with
``CERT_REQUIRED``, and calls it with `KubeClient` built from the kubeconfig: the handshake only
succeeds when the CA and the client certificate were both taken from the file. Also: tokens
(and token files read again), the merged ``$KUBECONFIG`` list, and messages for what is missing.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.k8s.api import KubeApiError
from meshkit.k8s.client import KubeClient
from meshkit.k8s.kubeconfig import KubeconfigError, context_names, load_access
from meshkit.k8s.sources import ISTIO_TYPES
from tests.k8s.cluster_harness import write_kubeconfig

pytestmark = pytest.mark.timeout(60)
VIRTUAL_SERVICES = ISTIO_TYPES[0]


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def issue(common_name: str, issuer: Issued | None = None, *, ca: bool = False,
          ip: str | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.cert.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        names = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(names, critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem, cert, key)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Server:
    url: str
    ca: Issued
    client: Issued
    seen: list[dict[str, Any]]


@pytest.fixture()
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    ca = issue("meshkit-test-ca", ca=True)
    server_cert = issue("127.0.0.1", ca, ip="127.0.0.1")
    client = issue("kubernetes-admin", ca)
    (tmp_path / "server.pem").write_bytes(server_cert.cert_pem)
    (tmp_path / "server.key").write_bytes(server_cert.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    context.load_verify_locations(cadata=ca.cert_pem.decode())
    context.verify_mode = ssl.CERT_REQUIRED
    seen: list[dict[str, Any]] = []

    async def virtual_services(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item for rdn in (peer or {}).get("subject", ()) for item in rdn)
        seen.append({"client": subject.get("commonName"),
                     "authorization": request.headers.get("Authorization")})
        return web.json_response({"kind": "VirtualServiceList", "items": []})

    app = web.Application()
    app.router.add_get(VIRTUAL_SERVICES.collection, virtual_services)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Server(f"https://127.0.0.1:{port}", ca, client, seen)
    finally:
        await runner.cleanup()


async def test_client_certificate_and_ca_from_data_fields(server: Server, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", server.url,
                            cluster={"certificate-authority-data": b64(server.ca.cert_pem)},
                            user={"client-certificate-data": b64(server.client.cert_pem),
                                  "client-key-data": b64(server.client.key_pem)})
    client = KubeClient(load_access(str(path), "kind-meshkit"), timeout_s=10)
    assert await asyncio.to_thread(client.list, VIRTUAL_SERVICES) == []
    assert server.seen == [{"client": "kubernetes-admin", "authorization": None}]


async def test_files_next_to_the_kubeconfig_and_a_foreign_ca_is_refused(server: Server,
                                                                        tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(server.ca.cert_pem)
    (tmp_path / "client.crt").write_bytes(server.client.cert_pem)
    (tmp_path / "client.key").write_bytes(server.client.key_pem)
    path = write_kubeconfig(tmp_path / "config", server.url, cluster={"certificate-authority": "ca.crt"},
                            user={"client-certificate": "client.crt", "client-key": "client.key"})
    client = KubeClient(load_access(str(path)), timeout_s=10)  # the current context
    assert await asyncio.to_thread(client.list, VIRTUAL_SERVICES) == []

    other_ca = issue("someone-else", ca=True)
    wrong = write_kubeconfig(tmp_path / "wrong", server.url,
                             cluster={"certificate-authority-data": b64(other_ca.cert_pem)},
                             user={"client-certificate": str(tmp_path / "client.crt"),
                                   "client-key": str(tmp_path / "client.key")})
    with pytest.raises(KubeApiError) as refused:
        await asyncio.to_thread(KubeClient(load_access(str(wrong)), timeout_s=10).list, VIRTUAL_SERVICES)
    assert refused.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


async def test_tokens_and_token_files_read_again(server: Server, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    cert = {"client-certificate-data": b64(server.client.cert_pem),
            "client-key-data": b64(server.client.key_pem)}
    path = write_kubeconfig(tmp_path / "config", server.url, cluster={"insecure-skip-tls-verify": True},
                            user={**cert, "tokenFile": str(token_file)})
    client = KubeClient(load_access(str(path)), timeout_s=10)
    await asyncio.to_thread(client.list, VIRTUAL_SERVICES)
    token_file.write_text("rotated\n")
    await asyncio.to_thread(client.list, VIRTUAL_SERVICES)
    assert [s["authorization"] for s in server.seen] == ["Bearer first", "Bearer rotated"]


def test_merged_list_first_file_wins_and_missing_pieces_are_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_kubeconfig(tmp_path / "a", "http://127.0.0.1:1", cluster={}, user={"token": "a"},
                             context="shared", current=None)
    second = write_kubeconfig(tmp_path / "b", "http://127.0.0.1:2", cluster={}, user={"token": "b"},
                              context="kind-meshkit", current="kind-meshkit")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'absent'}:{second}")
    assert context_names() == ["kind-meshkit", "shared"]
    access = load_access()  # current-context from the second file; its cluster "c" is the FIRST file's
    assert access.server == "http://127.0.0.1:1" and access.authorization() == "Bearer a"

    with pytest.raises(KubeconfigError) as missing:
        load_access(context="kind-other")
    assert "has no context 'kind-other'" in str(missing.value) and str(first) in str(missing.value)
    with pytest.raises(KubeconfigError) as nothing:
        load_access(str(tmp_path / "nowhere"))
    assert "no kubeconfig found at" in str(nothing.value)
    assert context_names(str(tmp_path / "nowhere")) == []
