"""`istioctl proxy-config` (`meshkit proxy-config`, `meshkit pc`) on a real Bookinfo mesh, as real
subprocesses: the clusters and endpoints of productpage's sidecar before and after Istio's
destination-rule-all.yaml, and the secret table's certificate against the one the sidecar really
presents on its inbound port (a TLS handshake, not its admin page).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e import cli
from tests.e2e import test_egress_gateway_tls_origination as tls_origination
from tests.e2e.mesh import SAMPLES, RunningMesh, sample, start_mesh
from tests.pids import alive
from tests.waiting import wait_until

REVIEWS = "reviews.default.svc.cluster.local"
WHEN = "%Y-%m-%dT%H:%M:%SZ"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("proxyconfig"), ["bookinfo"]) as running:
        yield running


def meshkit(mesh: RunningMesh, *args: str) -> subprocess.CompletedProcess[str]:
    return cli.meshkit(mesh.home, mesh.base, *args)


def rows(done: subprocess.CompletedProcess[str]) -> list[list[str]]:
    """The table's rows split on istioctl-style column gaps (three spaces or more)."""
    assert done.returncode == 0, done.stderr
    return [[cell.strip() for cell in line.split("   ") if cell.strip()] for line in done.stdout.splitlines()]


def presented_certificate(port: int) -> x509.Certificate:
    """The certificate a sidecar presents to a TLS client on its inbound port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_cluster_shows_the_reviews_subsets_once_destination_rule_all_is_applied(mesh: RunningMesh) -> None:
    rules = sample("destination-rule-all.yaml")
    mesh.client.delete_documents(rules)  # the mesh starts with them: take them away first
    mesh.wait_synced()
    try:
        before = rows(meshkit(mesh, "proxy-config", "cluster", "productpage-v1-0", "--fqdn", "reviews"))
        assert before[0] == ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"]
        assert before[1:] == [[REVIEWS, "9080", "-", "outbound", "EDS"]]  # no subset, no rule
        applied = meshkit(mesh, "apply", "-f", str(SAMPLES / "destination-rule-all.yaml"))
        assert applied.returncode == 0, applied.stderr
        mesh.wait_synced()
        after = rows(meshkit(mesh, "pc", "cluster", "deploy/productpage-v1", "--fqdn", "reviews"))
        assert [r[2] for r in after[1:]] == ["-", "v1", "v2", "v3"]
        assert {r[-1] for r in after[1:]} == {"reviews.default"}
        only_v2 = rows(meshkit(mesh, "pc", "cluster", "productpage-v1-0.default", "--fqdn", REVIEWS,
                               "--subset", "v2", "--direction", "outbound", "--port", "9080"))
        assert only_v2[1:] == [[REVIEWS, "9080", "v2", "outbound", "EDS", "reviews.default"]]
        v2_port = mesh.workload("reviews-v2-0")["inbound_port"]
        endpoints = rows(meshkit(mesh, "pc", "endpoint", "productpage-v1-0",
                                 "--cluster", f"outbound|9080|v2|{REVIEWS}"))
        assert endpoints == [["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"],
                             [f"127.0.0.1:{v2_port}", "HEALTHY", "OK", f"outbound|9080|v2|{REVIEWS}"]]
        data = json.loads(meshkit(mesh, "pc", "cluster", "productpage-v1-0", "--fqdn", "reviews",
                                  "-o", "json").stdout)
        assert sorted(c["subset"] for c in data) == ["", "v1", "v2", "v3"]
    finally:
        mesh.client.apply(rules)
        mesh.wait_synced()


def test_secret_shows_the_certificate_the_sidecar_really_presents(mesh: RunningMesh) -> None:
    row = mesh.workload("reviews-v1-0")
    presented = presented_certificate(int(row["inbound_port"]))
    table = rows(meshkit(mesh, "proxy-config", "secret", "reviews-v1-0"))
    assert table[0] == ["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER",
                        "NOT BEFORE"]
    default = next(r for r in table if r[0] == "default")
    assert default == ["default", "Cert Chain", "ACTIVE", "true", str(presented.serial_number),
                       presented.not_valid_after_utc.strftime(WHEN),
                       presented.not_valid_before_utc.strftime(WHEN)]
    root = next(r for r in table if r[0] == "ROOTCA")
    assert root[1:4] == ["CA", "ACTIVE", "true"] and root[4] != default[4]
    gateway = rows(meshkit(mesh, "pc", "secret", "deploy/istio-ingressgateway", "-n", "istio-system"))
    assert [r[0] for r in gateway[1:]] == ["default", "ROOTCA"] and gateway[2][4] == root[4]


def test_routes_listeners_and_istioctl_s_errors(mesh: RunningMesh) -> None:
    routes = rows(meshkit(mesh, "pc", "route", "productpage-v1-0", "--name", "9080"))
    assert routes[0] == ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]
    assert ["9080", f"{REVIEWS}:9080", "reviews + 3 more...", "/*"] in routes
    listeners = rows(meshkit(mesh, "pc", "listener", "productpage-v1-0", "--port", "9080"))
    assert listeners[1:] == [["0.0.0.0", "9080", "ALL", "Route: 9080"]]
    missing = meshkit(mesh, "pc", "cluster", "nope-v1-0")
    assert missing.returncode != 0 and 'pods "nope-v1-0" not found' in missing.stderr
    elsewhere = meshkit(mesh, "pc", "secret", "deploy/productpage-v1", "-n", "foo")
    assert elsewhere.returncode != 0 and 'deployments.apps "productpage-v1" not found in namespace "foo"' \
        in elsewhere.stderr
    sidecar = mesh.pids()["ratings-v1-0.sidecar"]  # the mesh's own process, started by this test's fixture
    os.kill(sidecar, signal.SIGKILL)
    wait_until(lambda: not alive(sidecar), 10.0, "ratings-v1-0's sidecar to exit")
    try:
        unreachable = meshkit(mesh, "pc", "cluster", "ratings-v1-0")
        assert unreachable.returncode != 0
        assert "Error: failed to retrieve config_dump from ratings-v1-0" in unreachable.stderr
    finally:
        restarted = meshkit(mesh, "restart", "ratings-v1-0")
        assert restarted.returncode == 0, restarted.stderr


@pytest.fixture(scope="module")
def egress_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("proxyconfig-egress"), ["external"], spare=3) as running:
        yield running


PC_SECRET_EGRESS = ("meshkit -n istio-system proxy-config secret deploy/istio-egressgateway "
                    "| grep client-credential\n")  # the task's line


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the task's own openssl is not installed")
def test_the_egress_gateway_shows_its_client_credential(egress_mesh: RunningMesh, tmp_path: Path) -> None:
    """"Egress Gateways with TLS Origination", mutual TLS part: once the Secret exists and the
    DestinationRule uses it, the task's `istioctl -n istio-system proxy-config secret
    deploy/istio-egressgateway | grep client-credential` finds it (serial 1: the task's -set_serial 1)."""
    origination = tls_origination  # the task's scripts, as that task's own e2e test runs them
    origination.ok(egress_mesh, origination.BEFORE_YOU_BEGIN + origination.CERTIFICATES
                   + origination.MUTUAL_TLS_SERVER + origination.ORIGINATE_MTLS_NGINX, tmp_path)
    egress_mesh.wait_synced()
    code, out, _ = origination.bash(egress_mesh, PC_SECRET_EGRESS, tmp_path)
    assert code == 1 and out == ""  # grep finds nothing: the DestinationRule names a Secret not there yet
    origination.ok(egress_mesh, origination.CLIENT_CREDENTIAL, tmp_path)
    egress_mesh.wait_synced()
    lines = origination.ok(egress_mesh, PC_SECRET_EGRESS, tmp_path).splitlines()
    client = x509.load_pem_x509_certificate((tmp_path / "client.example.com.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "example.com.crt").read_bytes())
    assert [line.split()[:5] for line in lines] == [
        ["kubernetes://client-credential", "Cert", "Chain", "ACTIVE", "true"],
        ["kubernetes://client-credential-cacert", "CA", "ACTIVE", "true", str(ca.serial_number)]]
    assert lines[0].split()[5:] == ["1", client.not_valid_after_utc.strftime(WHEN),
                                    client.not_valid_before_utc.strftime(WHEN)]
