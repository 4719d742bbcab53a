"""Changing a running mesh with real processes: deploy an app set, scale a workload up and down,
restart an instance whose sidecar was SIGKILLed, and `curl` from a workload (lab API and CLI).

One Bookinfo mesh for the module, with spare port blocks for what the tests add. Every test first
deploys ``clients`` (a no-op once they run), so the tests do not depend on their order.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.control.ca import spiffe_identity
from meshkit.lab.display import LabError
from meshkit.lab.mesh import Mesh
from meshkit.runtime.local import MeshError
from meshkit.runtime.ports import PortPlan
from meshkit.runtime.processes import owned_by
from tests.e2e import cli
from tests.e2e.mesh import RunningMesh, sample, start_mesh
from tests.pids import alive

STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}
DETAILS_URL = "http://details:9080/details/0"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("deploy"), ["bookinfo"], spare=6) as running:
        yield running


@pytest.fixture
def lab(mesh: RunningMesh) -> Mesh:
    mesh.mesh.deploy(["clients"])  # a no-op once they run
    status = mesh.status
    return Mesh(str(status["control"]), ingress_url=str(status["ingress"]), local=mesh.mesh)


def _wait_dead(pids: list[int], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []


def _admin(mesh: RunningMesh, instance: str, page: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{mesh.workload(instance)['admin_port']}{page}",
                                timeout=10) as answer:
        return json.loads(answer.read())


def _no_orphans(mesh: RunningMesh) -> None:
    """Every live process tagged as this mesh's (MESHKIT_MESH) is one the record names, and vice versa."""
    recorded = set(mesh.pids().values())

    def tagged() -> set[int]:
        return {p.pid for p in owned_by(str(mesh.home.resolve()))}

    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and tagged() != recorded:
        time.sleep(0.1)
    assert tagged() == recorded


def test_deploy_clients_into_running_bookinfo_then_curl_from_sleep(mesh: RunningMesh) -> None:
    before = mesh.pids()
    if "sleep-v1-0" not in before:
        began = time.monotonic()
        status = mesh.mesh.deploy(["clients"])
        took = time.monotonic() - began
        print(f"deploy(['clients']) into a running Bookinfo mesh: {took:.2f} s")  # a figure, not a test
        names = [w["name"] for w in status["workloads"]]
        assert names[-2:] == ["sleep-v1-0", "legacy-v1-0"]
        after = mesh.pids()
        assert {k: after[k] for k in before} == before  # nothing that ran was restarted
        assert set(after) - set(before) == {"sleep-v1-0", "sleep-v1-0.sidecar", "legacy-v1-0"}
    _no_orphans(mesh)
    # Returned only after every proxy ACKed: sleep's sidecar is connected and SYNCED already.
    proxies = {p["id"]: p for p in mesh.client.proxy_status()["proxies"]}
    assert proxies["sleep-v1-0.default"]["status"] == "SYNCED"
    assert all(p["status"] == "SYNCED" for p in proxies.values() if p["connected"])
    assert mesh.workload("legacy-v1-0")["outbound_proxy"] is None  # out of the mesh
    certs = _admin(mesh, "sleep-v1-0", "/certs")
    assert certs["ready"] and certs["identity"] == spiffe_identity("default", "sleep")
    lab = Mesh(str(mesh.status["control"]), ingress_url=mesh.ingress, local=mesh.mesh)
    page = lab.curl("sleep", "http://productpage:9080/productpage")
    assert page.status == 200 and "Reviews served by" in page.text
    assert page.header("x-app-podname") == "productpage-v1-0"
    assert page.upstream == f"127.0.0.1:{mesh.workload('productpage-v1-0')['inbound_port']}"
    # Deploying what runs changes nothing.
    recorded = mesh.pids()
    mesh.mesh.deploy(["clients"])
    lab.deploy("bookinfo")
    assert mesh.pids() == recorded


def _ca_token(pid: int) -> str:
    """The CA bootstrap token a sidecar was started with: the 0600 file its command line names."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    path = Path(argv[argv.index(b"--ca-token-file") + 1].decode())
    assert path.stat().st_mode & 0o777 == 0o600
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"MESHKIT_CA_TOKEN=" not in environ  # not in the environment any more
    return path.read_text()


def _csr_status(mesh: RunningMesh, token: str) -> int:
    """What the mesh's CA answers a CSR for the reviews identity signed in with ``token``."""
    from meshkit.proxy.tls.ca_client import CaClient, CertificateFetchError  # noqa: PLC0415
    from meshkit.proxy.tls.x509 import build_csr, generate_key  # noqa: PLC0415

    identity = spiffe_identity("default", "bookinfo-reviews")
    try:
        csr = build_csr(generate_key(), identity)
        asyncio.run(CaClient(str(mesh.status["control"]), token).sign(csr))
    except CertificateFetchError as refused:
        return int(refused.status or 0)
    return 200


def test_scale_up_spreads_traffic_and_scale_down_leaves_no_process(mesh: RunningMesh, lab: Mesh) -> None:
    with mesh.rules(*sample("virtual-service-all-v1.yaml")):
        lab.scale("reviews-v1", 2)
        added = mesh.workload("reviews-v1-1")
        assert added["healthy"] and added["sidecar_pid"]
        ports = [p for w in mesh.status["workloads"]
                 for p in (w["app_port"], w["inbound_port"], w["admin_port"]) if p is not None]
        assert len(set(ports)) == len(ports)  # nobody shares a port
        pods = Counter(lab.curl("sleep", "http://reviews:9080/reviews/0").json()["podname"]
                       for _ in range(40))
        assert set(pods) == {"reviews-v1-0", "reviews-v1-1"}, pods
        _no_orphans(mesh)

        tokens = {n: _ca_token(mesh.workload(n)["sidecar_pid"]) for n in ("reviews-v1-0", "reviews-v1-1")}
        lab.scale("reviews-v1", 1)
        assert "reviews-v1-1" not in [w["name"] for w in mesh.status["workloads"]]
        # The removed sidecar's CA token is revoked; the token the others run with still works.
        assert _csr_status(mesh, tokens["reviews-v1-1"]) == 401
        assert _csr_status(mesh, tokens["reviews-v1-0"]) == 200
        _wait_dead([added["pid"], added["sidecar_pid"]])
        assert not any(name.startswith("reviews-v1-1") for name in mesh.pids())
        _no_orphans(mesh)
        endpoints = mesh.client.request("GET", "registry/endpoints")
        rows = endpoints.get("endpoints", endpoints) if isinstance(endpoints, dict) else endpoints
        assert "reviews-v1-1" not in json.dumps(rows)
        targets = json.dumps(mesh.client.request("GET", "telemetry/targets"))
        assert "reviews-v1-1" not in targets and "reviews-v1-0" in targets
        # Every caller was told before the instance stopped: no request fails afterwards.
        answers = [lab.curl("sleep", "http://reviews:9080/reviews/0") for _ in range(20)]
        assert {(a.status, a.json()["podname"]) for a in answers} == {(200, "reviews-v1-0")}
    assert mesh.mesh.record().replicas == {}  # back to the catalog's default  # type: ignore[union-attr]


def test_a_deploy_that_cannot_start_leaves_the_mesh_as_it_was(mesh: RunningMesh, lab: Mesh) -> None:
    rec = mesh.mesh.record()
    assert rec is not None
    free_slot = min(set(range(len(rec.slots) + 1)) - set(rec.slots.values()))
    port = PortPlan(mesh.base).instance(free_slot).app
    before = (mesh.pids(), mesh.status)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the slot may have been used
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        # the error names the port and who holds it: this test process
        with pytest.raises(MeshError, match=rf"ports {port} \(held by pid {os.getpid()} \(.*python.*\)\) "
                                            "on 127.0.0.1 are in use, needed by reviews-v2-1"):
            mesh.mesh.scale("reviews-v2", 2)
        with pytest.raises(LabError, match="in use"):
            lab.scale("reviews-v2", 2)
    assert (mesh.pids(), mesh.status) == before
    assert mesh.mesh.record().replicas == {}  # type: ignore[union-attr]
    with pytest.raises(LabError, match=r"scale reviews-v9: no such workload in this mesh \(running: .*v2"):
        lab.scale("reviews-v9", 2)
    with pytest.raises(LabError, match="replicas must be a whole number from 0 to 10, got 11"):
        lab.scale("reviews-v2", 11)
    with pytest.raises(LabError, match="unknown app 'nosuch'"):
        lab.deploy("nosuch")


def test_restart_brings_back_an_instance_whose_sidecar_was_killed(mesh: RunningMesh, lab: Mesh) -> None:
    details = mesh.workload("details-v1-0")
    serial = _admin(mesh, "details-v1-0", "/certs")["chain"][0]["serial"]
    os.kill(details["sidecar_pid"], signal.SIGKILL)
    _wait_dead([details["sidecar_pid"]])
    assert mesh.workload("details-v1-0")["healthy"] is False
    broken = lab.curl("sleep", DETAILS_URL)
    assert broken.status == 503 and broken.flags, broken  # sleep's sidecar cannot reach it

    lab.restart("details-v1-0")
    back = mesh.workload("details-v1-0")
    assert back["healthy"] and back["sidecar_pid"] != details["sidecar_pid"]
    assert back["inbound_port"] == details["inbound_port"]  # same ports, as a restarted pod keeps its IP
    certs = _admin(mesh, "details-v1-0", "/certs")
    assert certs["ready"] and certs["identity"] == spiffe_identity("default", "bookinfo-details")
    assert certs["chain"][0]["serial"] != serial  # a new certificate from the CA, with a new token
    _no_orphans(mesh)
    # Under STRICT only mTLS gets in: sleep (through its sidecar) does, legacy's plaintext does not.
    with mesh.rules(STRICT):
        good = lab.curl("sleep", DETAILS_URL)
        assert good.status == 200 and good.json()["podname"] == "details-v1-0", good
        refused = lab.curl("legacy", DETAILS_URL)
        assert refused.status is None and refused.error and not refused.ok, refused
    plain = lab.curl("legacy", DETAILS_URL)
    assert plain.status == 200 and plain.json()["podname"] == "details-v1-0", plain
    with urllib.request.urlopen(f"{mesh.ingress}/productpage", timeout=30) as page:
        assert page.status == 200


def test_curl_results_and_refusals(mesh: RunningMesh, lab: Mesh) -> None:
    # a name the mesh does not know, under ALLOW_ANY: passed through, but it resolves nowhere (no
    # stand-in, real DNS off) -> Envoy's DNS failure
    missing = lab.curl("sleep", "http://nowhere:9080/", headers={"end-user": "jason"})
    assert missing.status == 503 and missing.flags == "DF" and not missing.ok
    assert "HTTP 503" in str(missing) and "flags DF" in repr(missing)
    assert "HTTP 503" in missing._repr_html_()
    posted = lab.curl("sleep", "http://details:9080/details/0", method="POST", body="x")
    assert posted.source == "sleep-v1-0" and posted.status is not None
    with pytest.raises(LabError, match=r"curl from_: no such workload 'nobody' \(known: productpage-v1-0"):
        lab.curl("nobody", DETAILS_URL)
    with pytest.raises(LabError, match="curl url: expected an absolute http:// or https:// URL"):
        lab.curl("sleep", "details:9080/details/0")
    with pytest.raises(LabError, match="curl url: legacy-v1-0 has no sidecar, and 'nowhere' names no"):
        lab.curl("legacy", "http://nowhere:9080/")
    remote = Mesh(lab.control_url)
    for call in (lambda: remote.curl("sleep", DETAILS_URL), lambda: remote.scale("reviews-v1", 2),
                 lambda: remote.deploy("clients")):
        with pytest.raises(LabError, match="local mesh only"):
            call()


def test_cli_deploy_scale_and_curl_from_legacy(mesh: RunningMesh, lab: Mesh) -> None:
    plain = cli.meshkit(mesh.home, mesh.base, "curl", "--from", "legacy", DETAILS_URL)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["podname"] == "details-v1-0"
    unknown = cli.meshkit(mesh.home, mesh.base, "scale", "reviews-v9=2")
    assert unknown.returncode != 0 and "scale reviews-v9: no such workload" in unknown.stderr
    malformed = cli.meshkit(mesh.home, mesh.base, "scale", "reviews-v1")
    assert malformed.returncode != 0 and "expected WORKLOAD=N" in malformed.stderr
    nosuch = cli.meshkit(mesh.home, mesh.base, "deploy", "nosuch")
    assert nosuch.returncode != 0 and "unknown app 'nosuch'" in nosuch.stderr
    scaled = cli.meshkit(mesh.home, mesh.base, "scale", "ratings-v1=0")
    assert scaled.returncode == 0, scaled.stderr
    assert "ratings-v1 scaled to 0" in scaled.stdout
    try:
        assert not any(w["service"] == "ratings" for w in mesh.status["workloads"])
        # No ratings endpoint left: reviews v2 shows its "ratings unavailable" answer, the page still works.
        answer = lab.curl("sleep", "http://ratings:9080/ratings/0")
        assert answer.status == 503 and answer.flags == "UH", answer
    finally:
        again = cli.meshkit(mesh.home, mesh.base, "scale", "ratings-v1=1")
    assert again.returncode == 0, again.stderr
    assert lab.curl("sleep", "http://ratings:9080/ratings/0").status == 200
    _no_orphans(mesh)


def test_up_on_a_mesh_with_a_dead_instance_restarts_only_that_instance(mesh: RunningMesh, lab: Mesh) -> None:
    before = mesh.pids()
    lab.kill("reviews-v2-0")
    _wait_dead([before["reviews-v2-0"]])
    assert not mesh.mesh.running()
    mesh.mesh.up()
    after = mesh.pids()
    assert after["reviews-v2-0"] != before["reviews-v2-0"] and mesh.workload("reviews-v2-0")["healthy"]
    assert {k: v for k, v in after.items() if k != "reviews-v2-0"} == \
        {k: v for k, v in before.items() if k != "reviews-v2-0"}
    assert mesh.mesh.running()
    _no_orphans(mesh)


def test_restart_of_a_dead_ingress_gateway(mesh: RunningMesh, lab: Mesh) -> None:
    gateway = mesh.pids()["ingressgateway"]
    os.kill(gateway, signal.SIGKILL)
    _wait_dead([gateway])
    with pytest.raises(LabError, match="no answer from the ingress"):
        lab.visit("/productpage", timeout=5)
    lab.restart("ingressgateway")
    assert mesh.pids()["ingressgateway"] != gateway
    page = lab.visit("/productpage")
    assert page.status == 200, page
    _no_orphans(mesh)



def test_changes_to_the_mesh_wait_for_each_other(mesh: RunningMesh) -> None:
    errors: list[BaseException] = []

    def scale() -> None:
        try:
            mesh.mesh.scale("reviews-v3", 1)  # no change, but it still takes the change lock
        except BaseException as error:  # reported to the test thread
            errors.append(error)

    worker = threading.Thread(target=scale)
    with mesh.mesh.state.changing():  # as another `meshkit deploy` would hold it
        worker.start()
        worker.join(1.0)
        assert worker.is_alive()  # waiting for the lock
    worker.join(30.0)
    assert not worker.is_alive() and errors == []


def test_httpbin_deployed_later_gets_its_subsets_and_reset_keeps_them(mesh: RunningMesh, lab: Mesh) -> None:
    lab.deploy("httpbin")
    assert {w["name"] for w in mesh.status["workloads"]} >= {"httpbin-v1-0", "httpbin-v2-0"}
    assert lab.get("DestinationRule", "httpbin") is not None  # its default subsets, as `up` applies them
    lab.apply(sample("httpbin-mirroring.yaml"))  # routes to subset v1, mirrors to v2: needs the subsets
    answer = lab.curl("sleep", "http://httpbin:8000/headers")
    assert answer.status == 200 and answer.header("x-app-podname") == "httpbin-v1-0", answer
    lab.reset()
    kept = {(r["kind"], r["metadata"]["name"]) for r in lab.get() or [] if isinstance(r, dict)}
    assert ("DestinationRule", "httpbin") in kept and ("DestinationRule", "reviews") in kept
    assert ("VirtualService", "httpbin") not in kept


def test_changes_to_a_mesh_whose_control_plane_died_fail_at_once_saying_so(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    with start_mesh(tmp_path_factory.mktemp("headless"), ["httpbin"]) as running:
        rec = running.mesh.record()
        assert rec is not None
        control = rec.processes["control"].pid
        os.kill(control, signal.SIGKILL)
        _wait_dead([control])
        with pytest.raises(MeshError, match=r"^restart httpbin-v1-0: the mesh's control plane at "
                                            r"http://127\.0\.0\.1:\d+ does not answer; start the mesh again"):
            running.mesh.restart("httpbin-v1-0")
        with pytest.raises(MeshError, match="deploy: the mesh's control plane is not running"):
            running.mesh.deploy(["clients"])
