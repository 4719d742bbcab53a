"""mTLS in the REAL local mesh (Bookinfo + the sleep/legacy clients): automatic mTLS between
sidecars, PeerAuthentication PERMISSIVE vs STRICT against a plaintext client, bad client
certificates at a sidecar's inbound port, a server with the wrong SPIFFE id, the CA's API,
and AuthorizationPolicy by principal, method and path. One mesh for the whole module.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.tls import CertificateManager
from meshkit.proxy.tls.x509 import LocalCertificateManager
from meshkit.runtime.tap import describe, hexdump, tap
from tests.e2e.mesh import RunningMesh
from tests.security.e2e_support import (
    admin,
    client_manager,
    get,
    issue_token,
    legacy_fetch,
    mesh_ca,
    requests_total,
    secure_mesh,
    spiffe,
    through,
    tls_get,
)

PRODUCTPAGE = spiffe("bookinfo-productpage")
RATINGS_URL = "http://ratings:9080/ratings/0"


def _doc(kind: str, name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with secure_mesh(tmp_path_factory.mktemp("mtls"), ["bookinfo", "clients"]) as running:
        yield running


def test_traffic_between_sidecars_is_mutual_tls(mesh: RunningMesh) -> None:
    for _ in range(5):
        status, _ = get(f"{mesh.ingress}/productpage")
        assert status == 200
    # details is called by productpage only: the destination sidecar saw productpage's certificate.
    mtls = requests_total(mesh, "details-v1-0", reporter="destination", response_code="200",
                          source_principal=PRODUCTPAGE, connection_security_policy="mutual_tls")
    assert mtls >= 5
    plain = requests_total(mesh, "details-v1-0", reporter="destination", connection_security_policy="none")
    assert plain == 0
    # The ingress gateway has Istio's gateway identity and speaks mTLS to productpage.
    gateway = spiffe("istio-ingressgateway-service-account", "istio-system")
    assert requests_total(mesh, "productpage-v1-0", reporter="destination", source_principal=gateway,
                          connection_security_policy="mutual_tls") >= 5
    certs = admin(mesh, "details-v1-0", "/certs")
    assert certs["ready"] and certs["identity"] == spiffe("bookinfo-details")
    assert certs["chain"][0]["spiffe_id"] == spiffe("bookinfo-details")
    assert 0 < certs["seconds_until_rotation"] <= 12 * 3600
    stats = admin(mesh, "productpage-v1-0", "/stats")
    assert stats["upstream"]["cx_mtls_total"] >= 1


def test_plaintext_from_legacy_permissive_then_strict(mesh: RunningMesh) -> None:
    ratings = mesh.workload("ratings-v1-0")
    direct = f"http://127.0.0.1:{ratings['inbound_port']}/ratings/0"
    before = legacy_fetch(mesh, direct)
    assert before["status"] == 200, before
    assert requests_total(mesh, "ratings-v1-0", reporter="destination",
                          connection_security_policy="none", response_code="200") >= 1
    refused_before = admin(mesh, "ratings-v1-0", "/stats")["mtls"]["plaintext_refused"]
    strict = _doc("PeerAuthentication", "default", {"mtls": {"mode": "STRICT"}}, namespace="istio-system")
    with mesh.rules(strict):
        # Twice: the first may meet its old keep-alive connection being closed by the mode change,
        # the second is certainly a new plaintext connection, which STRICT refuses.
        for _ in range(2):
            after = legacy_fetch(mesh, direct)
            assert after["status"] != 200 and after["error"], after
        assert admin(mesh, "ratings-v1-0", "/stats")["mtls"]["plaintext_refused"] > refused_before
        # Mesh traffic is mTLS and keeps working under STRICT.
        status, body = through(mesh, "sleep-v1-0", RATINGS_URL)
        assert status == 200, body
    back = legacy_fetch(mesh, direct)
    assert back["status"] == 200, back


def test_sidecar_rejects_bad_client_certificates(mesh: RunningMesh, tmp_path: Path) -> None:
    port = mesh.workload("ratings-v1-0")["inbound_port"]
    authority = mesh_ca(mesh)
    sleep = spiffe("sleep")

    def answer(manager: CertificateManager) -> bytes:
        return tls_get(port, manager.client_context, "/ratings/0", "ratings:9080")

    # Control: a certificate of the mesh's CA is served (so the refusals below mean something).
    assert answer(client_manager(authority, sleep)).startswith(b"HTTP/1.1 200")
    stranger = CertificateAuthority.open(tmp_path / "other-ca")
    assert answer(client_manager(stranger, sleep)) == b""
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    expired = client_manager(authority, sleep, ttl=timedelta(minutes=5), now=an_hour_ago)
    assert answer(expired) == b""
    no_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_certificate.check_hostname = False
    no_certificate.verify_mode = ssl.CERT_NONE
    assert tls_get(port, no_certificate, "/ratings/0", "ratings:9080") == b""
    assert admin(mesh, "ratings-v1-0", "/stats")["mtls"]["handshake_failed"] >= 3


async def test_server_with_the_wrong_spiffe_identity_is_refused(mesh: RunningMesh) -> None:
    impostor = client_manager(mesh_ca(mesh), spiffe("impostor"))
    served = 0
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        writers.append(writer)
        try:
            for _ in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                served += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nimpostor")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=impostor.server_context)
    port = server.sockets[0].getsockname()[1]
    client = mesh.client
    client.request("POST", "registry/services", json_body={"name": "lookalike", "namespace": "default",
                                                             "port": 9080})

    def register(service_account: str) -> None:
        client.request("POST", "registry/endpoints", json_body={
            "instance": "lookalike-v1-0", "workload": "lookalike-v1", "service": "lookalike",
            "namespace": "default", "address": "127.0.0.1", "port": port,
            "labels": {"app": "lookalike", "version": "v1"}, "service_account": service_account,
            "has_sidecar": True, "healthy": True,
        })
        mesh.wait_synced()

    url = "http://lookalike:9080/"
    try:
        register("impostor")  # the registry says who it is: the sidecar expects that identity
        status, body = await asyncio.to_thread(through, mesh, "sleep-v1-0", url)
        assert (status, body) == (200, "impostor")
        register("bookinfo-ratings")  # now it claims to be ratings, but its certificate says otherwise
        status, body = await asyncio.to_thread(through, mesh, "sleep-v1-0", url)
        assert status == 503 and "connection failure" in body, body
        stats = await asyncio.to_thread(admin, mesh, "sleep-v1-0", "/stats")
        assert stats["upstream"]["cx_peer_identity_fail"] >= 1
        assert served == 1
    finally:
        client.request("DELETE", "registry/endpoints/default/lookalike-v1-0")
        client.request("DELETE", "registry/services/default/lookalike")
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()


def test_ca_api_signs_own_identity_and_refuses_a_foreign_one(mesh: RunningMesh) -> None:
    token = issue_token(mesh, spiffe("sleep"))
    own = LocalCertificateManager(spiffe("sleep"))
    foreign = LocalCertificateManager(spiffe("bookinfo-ratings"))
    client = mesh.client
    signed = client.request("POST", "ca/sign", json_body={"csr": own.new_csr(), "token": token})
    own.rotate(signed["cert_chain"], signed["root"])
    assert own.current is not None and own.current.identity == spiffe("sleep")
    status, text = _post(mesh, "/api/v1/ca/sign", {"csr": foreign.new_csr(), "token": token})
    assert status == 403
    assert spiffe("sleep") in text and spiffe("bookinfo-ratings") in text
    status, _ = _post(mesh, "/api/v1/ca/sign", {"csr": own.new_csr(), "token": "not-a-token"})
    assert status == 401


def _post(mesh: RunningMesh, path: str, body: dict[str, Any]) -> tuple[int, str]:
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(f"{mesh.status['control']}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_authorization_policy_by_principal_method_and_path(mesh: RunningMesh) -> None:
    # Without policies everyone gets through.
    assert through(mesh, "productpage-v1-0", RATINGS_URL)[0] == 200
    assert through(mesh, "sleep-v1-0", "http://ratings:9080/ratings/2")[0] == 200
    allow = _doc("AuthorizationPolicy", "ratings-allow-sleep", {
        "selector": {"matchLabels": {"app": "ratings"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                   "to": [{"operation": {"methods": ["GET"], "paths": ["/ratings/*"]}}]}],
    })
    deny = _doc("AuthorizationPolicy", "ratings-deny-2", {
        "selector": {"matchLabels": {"app": "ratings"}},
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": ["/ratings/2"]}}]}],
    })
    with mesh.rules(allow, deny):
        assert through(mesh, "sleep-v1-0", RATINGS_URL) [0] == 200
        denied = {
            "principal": through(mesh, "productpage-v1-0", RATINGS_URL),
            "method": through(mesh, "sleep-v1-0", RATINGS_URL, method="POST", body=b'{"Reviewer1": 5}'),
            "path": through(mesh, "sleep-v1-0", "http://ratings:9080/health"),
            "deny overrides allow": through(mesh, "sleep-v1-0", "http://ratings:9080/ratings/2"),
        }
        for why, (status, body) in denied.items():
            assert (status, body.strip()) == (403, "RBAC: access denied"), why
    assert through(mesh, "productpage-v1-0", RATINGS_URL)[0] == 200


async def test_tap_shows_tls_records_then_plaintext_when_mtls_is_disabled(mesh: RunningMesh) -> None:
    control, sleep_proxy = mesh.status["control"], mesh.workload("sleep-v1-0")["outbound_proxy"]
    token = mesh.mesh.admin_token()
    encrypted = await tap(control, sleep_proxy, "ratings-v1-0", path="/ratings/0", max_bytes=64, token=token)
    assert encrypted.connections >= 1 and encrypted.statuses[-1] == 200
    assert encrypted.client_to_server[:2] == b"\x16\x03" and encrypted.server_to_client[:2] == b"\x16\x03"
    assert b"/ratings/0" not in encrypted.client_to_server
    assert "TLS handshake" in describe(bytes(encrypted.client_to_server))
    plain_dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "ratings", "namespace": "default"},
                "spec": {"host": "ratings", "trafficPolicy": {"tls": {"mode": "DISABLE"}},
                         "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}
    with mesh.rules(plain_dr):
        plain = await tap(control, sleep_proxy, "ratings-v1-0", path="/ratings/0", max_bytes=64, token=token)
    assert plain.client_to_server.startswith(b"GET /ratings/0 HTTP/1.1\r\n"), bytes(plain.client_to_server)
    assert plain.server_to_client.startswith(b"HTTP/1.1 200")
    assert "|GET /ratings/0 H|" in hexdump(bytes(plain.client_to_server))[0]
    # The endpoint is back on the sidecar's own port afterwards.
    assert through(mesh, "sleep-v1-0", RATINGS_URL)[0] == 200
    endpoints = mesh.client.request("GET", "registry/endpoints")["endpoints"]
    ratings = next(e for e in endpoints if e["instance"] == "ratings-v1-0")
    assert ratings["port"] == mesh.workload("ratings-v1-0")["inbound_port"]


def test_meshkit_certs_prints_the_chain(mesh: RunningMesh) -> None:
    env = {**os.environ, "MESHKIT_HOME": str(mesh.home)}
    done = subprocess.run([sys.executable, "-m", "meshkit.cli", "certs", "ratings-v1"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"ratings-v1-0  {spiffe('bookinfo-ratings')}")
    serial = admin(mesh, "ratings-v1-0", "/certs")["chain"][0]["serial"]
    for expected in (f"SPIFFE ID   {spiffe('bookinfo-ratings')}", f"serial      {serial}",
                     "issuer      CN=meshkit root CA", "trusted root", "rotation    in "):
        assert expected in out, out
    missing = subprocess.run([sys.executable, "-m", "meshkit.cli", "certs", "nosuch"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode != 0 and "no sidecar 'nosuch'" in missing.stderr
