"""On-demand rotation (admin ``POST /certs/rotate``, ``meshkit certs rotate``) in a REAL local mesh.

One mesh (httpbin v1/v2 + the sleep and legacy clients, 24 h certificates, so no scheduled
rotation happens during the module): a rotation asked for changes the serial at once, new
connections present the new certificate, traffic between sidecars keeps flowing over mTLS,
concurrent requests share one renewal, GET never rotates, the CLI verb prints old -> new, the
tap verb takes ``--from legacy``. The last mesh test stops the control plane: the CA is then
unreachable, the answer is a 503 that says so, and the old certificate keeps serving.
A sidecar started without a CA token, or with fixed ``--tls-dir`` certificates, answers 409.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.admin import _loopback
from meshkit.proxy.tls import CHAIN_FILE, KEY_FILE, ROOT_FILE
from meshkit.proxy.tls.x509 import build_csr, generate_key
from tests.e2e.mesh import RunningMesh
from tests.pids import alive
from tests.security.e2e_support import (
    admin,
    client_manager,
    mesh_ca,
    requests_total,
    secure_mesh,
    spiffe,
    through,
)

HTTPBIN = "http://httpbin:8000/get"
TARGET = "httpbin-v1-0"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = tmp_path_factory.mktemp("rotate-now")
    with secure_mesh(home, ["httpbin", "clients"]) as running:
        yield running


def post(port: int, path: str = "/certs/rotate", method: str = "POST") -> tuple[int, Any]:
    """One request to a sidecar's admin port; (status, JSON or text answer)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"" if method == "POST" else None,
                                     method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30.0) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def serial(mesh: RunningMesh, instance: str) -> str:
    return str(admin(mesh, instance, "/certs")["chain"][0]["serial"])


def admin_port(mesh: RunningMesh, instance: str) -> int:
    return int(mesh.workload(instance)["admin_port"])


def presented_serial(port: int, context: ssl.SSLContext) -> str:
    """The serial of the certificate a sidecar's inbound port presents to a NEW connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as raw, \
            context.wrap_socket(raw, server_hostname=None) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def test_rotate_changes_the_serial_and_new_connections_use_it(mesh: RunningMesh) -> None:
    client = client_manager(mesh_ca(mesh), spiffe("sleep"))
    inbound = int(mesh.workload(TARGET)["inbound_port"])
    before = admin(mesh, TARGET, "/certs")
    assert presented_serial(inbound, client.client_context) == before["chain"][0]["serial"]
    # An mTLS connection opened before the rotation stays usable after it.
    with socket.create_connection(("127.0.0.1", inbound), timeout=10.0) as raw, \
            client.client_context.wrap_socket(raw, server_hostname=None) as kept:
        status, answer = post(admin_port(mesh, TARGET))
        assert status == 200, answer
        assert answer["rotated"] is True and answer["identity"] == spiffe("httpbin")
        assert answer["old"]["serial"] == before["chain"][0]["serial"]
        assert answer["new"]["serial"] != answer["old"]["serial"]
        assert answer["new"]["not_after"] >= answer["old"]["not_after"]  # whole seconds
        kept.sendall(b"GET /get HTTP/1.1\r\nHost: httpbin:8000\r\nConnection: close\r\n\r\n")
        head = kept.recv(64)
    assert head.startswith(b"HTTP/1.1 200"), head
    after = admin(mesh, TARGET, "/certs")
    assert after["chain"][0]["serial"] == answer["new"]["serial"]
    assert after["certificates_issued"] == before["certificates_issued"] + 1
    assert after["rotations_requested"] == before["rotations_requested"] + 1
    assert after["last_error"] is None
    assert presented_serial(inbound, client.client_context) == answer["new"]["serial"]


def test_traffic_keeps_flowing_over_mtls_across_rotations(mesh: RunningMesh) -> None:
    """Requests sleep -> httpbin while both sidecars rotate: every one answers 200, over mTLS."""
    sleep_port, target_port = admin_port(mesh, "sleep-v1-0"), admin_port(mesh, TARGET)
    before = requests_total(mesh, TARGET, reporter="destination", response_code="200",
                            source_principal=spiffe("sleep"), connection_security_policy="mutual_tls")
    serials = {serial(mesh, "sleep-v1-0"), serial(mesh, TARGET)}
    statuses = []
    for round_ in range(4):
        port = sleep_port if round_ % 2 == 0 else target_port
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            rotation = pool.submit(post, port)
            statuses += [through(mesh, "sleep-v1-0", HTTPBIN)[0] for _ in range(5)]
            status, answer = rotation.result(timeout=60)
        assert status == 200, answer
        serials.add(answer["new"]["serial"])
        statuses += [through(mesh, "sleep-v1-0", HTTPBIN)[0] for _ in range(3)]
    assert statuses == [200] * len(statuses)
    assert len(serials) == 6, serials  # 2 before + 4 new: each rotation made a new certificate
    after = requests_total(mesh, TARGET, reporter="destination", response_code="200",
                           source_principal=spiffe("sleep"), connection_security_policy="mutual_tls")
    # httpbin-v1-0 got its share of the calls (the balancer spreads them over v1 and v2), all mTLS.
    assert after > before


def test_concurrent_requests_share_one_renewal(mesh: RunningMesh) -> None:
    port = admin_port(mesh, TARGET)
    issued = admin(mesh, TARGET, "/certs")["certificates_issued"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: post(port), range(4)))
    assert [status for status, _ in answers] == [200] * 4, answers
    docs = [doc for _, doc in answers]
    issued_now = admin(mesh, TARGET, "/certs")["certificates_issued"]
    made = issued_now - issued
    # Never two renewals at once: requests arriving while one runs (a renewal takes well over
    # 100 ms: it starts the key helper process) join it and get the same new serial.
    assert 1 <= made < 4, docs
    assert len({d["new"]["serial"] for d in docs}) == made, docs
    assert sum(1 for d in docs if not d["joined_renewal_in_flight"]) == made, docs
    assert serial(mesh, TARGET) in {d["new"]["serial"] for d in docs}


def test_get_never_rotates_and_other_pages_stay_read_only(mesh: RunningMesh) -> None:
    port = admin_port(mesh, TARGET)
    before = serial(mesh, TARGET)
    status, answer = post(port, method="GET")
    assert status == 405 and "use POST" in answer
    status, answer = post(port, "/certs")
    assert status == 405 and "read-only" in answer and "/certs/rotate" in answer
    assert serial(mesh, TARGET) == before


def test_cli_certs_rotate(mesh: RunningMesh) -> None:
    env = {**os.environ, "MESHKIT_HOME": str(mesh.home)}
    before = serial(mesh, "sleep-v1-0")
    done = subprocess.run([sys.executable, "-m", "meshkit.cli", "certs", "rotate", "sleep-v1-0"], env=env,
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    now = serial(mesh, "sleep-v1-0")
    assert now != before
    assert done.stdout.startswith("sleep-v1-0: certificate rotated in ")
    assert f"old serial  {before}" in done.stdout and f"new serial  {now}" in done.stdout, done.stdout
    legacy = subprocess.run([sys.executable, "-m", "meshkit.cli", "certs", "rotate", "legacy-v1-0"], env=env,
                            capture_output=True, text=True, timeout=90, check=False)
    assert legacy.returncode != 0 and "no sidecar 'legacy-v1-0'" in legacy.stderr
    missing = subprocess.run([sys.executable, "-m", "meshkit.cli", "certs", "rotate"], env=env,
                             capture_output=True, text=True, timeout=90, check=False)
    assert missing.returncode != 0 and "needs an instance" in missing.stderr


def test_cli_tap_from_legacy_shows_plaintext(mesh: RunningMesh) -> None:
    env = {**os.environ, "MESHKIT_HOME": str(mesh.home)}
    done = subprocess.run([sys.executable, "-m", "meshkit.cli", "tap", "--from", "legacy", TARGET,
                           "--path", "/get", "--max-bytes", "64", "--seconds", "10"], env=env,
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"legacy-v1-0 -> {TARGET}: first ") and "plaintext HTTP" in first, done.stdout
    assert "|GET /get HTTP/1." in done.stdout, done.stdout
    wrong = subprocess.run([sys.executable, "-m", "meshkit.cli", "tap", "--from", "legacy", "sleep-v1-0",
                            TARGET], env=env, capture_output=True, text=True, timeout=90, check=False)
    assert wrong.returncode != 0 and "with --from give only TARGET" in wrong.stderr


def _write_tls_dir(directory: Path) -> Path:
    """Fixed certificate files for ``--tls-dir`` (key, chain, root), from a throwaway CA."""
    authority = CertificateAuthority.open(directory.parent / "files-ca")
    identity = spiffe("httpbin")
    key = generate_key()
    directory.mkdir()
    (directory / CHAIN_FILE).write_text(authority.sign_csr(build_csr(key, identity), identity))
    (directory / KEY_FILE).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / ROOT_FILE).write_text(authority.root_pem)
    return directory


@pytest.mark.parametrize(("mode", "says"), [
    ("plaintext", "runs without mTLS (no CA token)"),
    ("tls-dir", "comes from files (--tls-dir), not from a CA"),
])
def test_a_sidecar_without_a_ca_answers_409(tmp_path: Path, mode: str, says: str) -> None:
    ports_file = tmp_path / "ports.json"
    env = {k: v for k, v in os.environ.items() if k != "MESHKIT_CA_TOKEN"}
    with socket.socket() as probe:  # a control plane address nothing listens on: no config, no CA
        probe.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{probe.getsockname()[1]}"
    argv = [sys.executable, "-m", "meshkit.proxy", "--control", nowhere, "--id", "lonely-0.default",
            "--outbound-port", "0", "--inbound-port", "0", "--admin-port", "0",
            "--ports-file", str(ports_file)]
    if mode == "tls-dir":
        argv += ["--tls-dir", str(_write_tls_dir(tmp_path / "tls"))]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ports_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ports_file.exists(), f"the sidecar did not start (exit {proc.poll()})"
        port = json.loads(ports_file.read_text())["admin"]
        status, answer = post(port)
        assert status == 409, answer
        assert answer["rotated"] is False and says in answer["error"], answer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_ca_unreachable_keeps_the_old_certificate(mesh: RunningMesh) -> None:
    """LAST in this module: it stops the control plane (the mesh is torn down right after)."""
    before = serial(mesh, TARGET)
    control = mesh.pids()["control"]
    os.kill(control, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while alive(control) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(control), "the control plane did not stop"
    status, answer = post(admin_port(mesh, TARGET))
    assert status == 503, answer
    assert answer["rotated"] is False
    assert "cannot reach the CA" in answer["error"] and f"serial {before}" in answer["error"], answer
    assert "keeps serving" in answer["error"]
    doc = admin(mesh, TARGET, "/certs")
    assert doc["chain"][0]["serial"] == before and doc["ready"]
    assert "cannot reach the CA" in (doc["last_error"] or "")
    # The sidecars keep their config and certificates: sleep -> httpbin still works over mTLS.
    assert [through(mesh, "sleep-v1-0", HTTPBIN)[0] for _ in range(3)] == [200] * 3


@pytest.mark.parametrize(("address", "local"), [
    ("127.0.0.1", True), ("127.0.0.6", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.244.0.7", False), ("::ffff:10.0.0.1", False), ("fe80::1", False), ("", False), ("pod-a", False),
])
def test_only_loopback_callers_may_rotate(address: str, local: bool) -> None:
    """The admin port listens on 0.0.0.0 in a Kubernetes pod: POST /certs/rotate is for the pod itself."""
    assert _loopback(address) is local
