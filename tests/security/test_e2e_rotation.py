"""Certificate rotation under continuous load in the REAL local mesh loses no request.

Certificates live 4 s, so every sidecar rotates every ~2 s. Load runs open-loop at 100 req/s
through the ingress gateway to productpage, which calls ratings: two mTLS hops per request.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from meshkit.runtime.load import LoadGenerator
from tests.e2e.mesh import RunningMesh
from tests.security.e2e_support import admin, client_manager, mesh_ca, requests_total, secure_mesh, spiffe

TTL_SECONDS = 4
RPS = 100.0
DURATION = 8.0  # >= 3 rotations at TTL/2 each
SIDECARS = ("productpage-v1-0", "ratings-v1-0")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = tmp_path_factory.mktemp("rotation")
    with secure_mesh(home, ["bookinfo"], cert_ttl=f"{TTL_SECONDS}s") as running:
        yield running


async def test_rotation_under_load_loses_no_request(mesh: RunningMesh) -> None:
    before = {name: admin(mesh, name, "/certs") for name in SIDECARS}
    for doc in before.values():
        assert doc["ready"] and doc["seconds_until_rotation"] <= TTL_SECONDS / 2 + 0.5
    url = f"{mesh.ingress}/api/v1/products/0/ratings"
    load = LoadGenerator(url, rps=RPS, duration=DURATION, timeout=10.0)
    summary = await load.run()
    stats = load.stats
    after = {name: admin(mesh, name, "/certs") for name in SIDECARS}
    assert stats["sent"] >= RPS * DURATION * 0.8, summary
    assert stats["codes"] == {"200": stats["sent"]}, summary
    for name in SIDECARS:
        rotations = after[name]["certificates_issued"] - before[name]["certificates_issued"]
        assert rotations >= 3, f"{name}: {rotations} rotations in {DURATION}s"
        assert after[name]["chain"][0]["serial"] != before[name]["chain"][0]["serial"]
        assert after[name]["last_error"] is None
    # ratings served the load over mTLS, from productpage's (rotating) identity.
    served = requests_total(mesh, "ratings-v1-0", reporter="destination", response_code="200",
                            source_principal=spiffe("bookinfo-productpage"),
                            connection_security_policy="mutual_tls")
    assert served >= stats["sent"]


def test_new_connections_get_the_rotated_certificate(mesh: RunningMesh) -> None:
    port = mesh.workload("ratings-v1-0")["inbound_port"]
    client = client_manager(mesh_ca(mesh), spiffe("sleep"))
    first = admin(mesh, "ratings-v1-0", "/certs")["chain"][0]["serial"]
    seen = set()
    for _ in range(30):  # bounded: up to ~6 s, a rotation happens every ~2 s
        before = admin(mesh, "ratings-v1-0", "/certs")["chain"][0]["serial"]
        presented = _served_serial(port, client.client_context)
        later = admin(mesh, "ratings-v1-0", "/certs")["chain"][0]["serial"]
        assert presented in {before, later}
        seen.add(presented)
        if presented != first:
            break
        time.sleep(0.2)
    assert len(seen) >= 2, f"the sidecar kept presenting {first}"


def test_sidecars_never_load_cryptography(mesh: RunningMesh) -> None:
    """Issue 4's memory budget: mTLS sidecars make keys in a helper process and check certificates
    with ssl, so cryptography (~10 MiB of RSS each) is never mapped into them, even after rotations."""
    own = _cryptography_mappings(os.getpid())
    assert own, "the detector is broken: this test process has cryptography loaded and it found nothing"
    checked = 0
    for workload in mesh.status["workloads"]:
        pid = workload["sidecar_pid"]
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "_ssl" in maps, f"{workload['name']}: pid {pid} does not look like an mTLS sidecar"
        for _ in range(50):  # up to ~10 s: rotated at least once (every ~2 s), so the helper ran again
            if admin(mesh, workload["name"], "/certs")["certificates_issued"] >= 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{workload['name']}: no rotation within 10 s")
        loaded = _cryptography_mappings(pid)
        assert loaded == [], f"{workload['name']}'s sidecar (pid {pid}) loaded cryptography: {loaded[:2]}"
        checked += 1
    assert checked >= 6


def _cryptography_mappings(pid: int) -> list[str]:
    return [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/cryptography/" in line]


def _served_serial(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=None) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return f"{x509.load_der_x509_certificate(der).serial_number:x}"
