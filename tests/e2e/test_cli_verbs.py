"""The mesh verbs of the `meshkit` CLI as real subprocesses against a running local mesh:
status, curl --from, logs (app, --sidecar, --access), kill + restart, load, top --once.

The mesh (Bookinfo plus the `clients` set: `sleep` in the mesh, `legacy` outside it) is started
in-process; each command finds it through ``MESHKIT_HOME``, as a learner's terminal would.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.e2e import cli
from tests.e2e.mesh import RunningMesh, start_mesh
from tests.e2e.traffic import get_one
from tests.pids import alive


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("verbs"), ["bookinfo", "clients"]) as running:
        yield running


def meshkit(mesh: RunningMesh, *args: str) -> subprocess.CompletedProcess[str]:
    return cli.meshkit(mesh.home, mesh.base, *args)


def test_status_table_lists_every_instance(mesh: RunningMesh) -> None:
    done = meshkit(mesh, "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"control plane  {mesh.status['control']}"
    assert lines[1] == (f"ingress        {mesh.status['ingress']}   "
                        f"(HTTPS Gateway servers: {mesh.status['ingress_https']}, "
                        f"TCP Gateway servers: {mesh.status['ingress_tcp']})")
    end = lines.index("")  # the table, then what the local mesh cannot protect
    rows = {line.split()[0]: line.split() for line in lines[3:end]}
    assert set(rows) == {w["name"] for w in mesh.status["workloads"]}
    assert lines[end + 1] == "what the local mesh cannot protect (docs/security.md, threat model):"
    assert "APP" in lines[end + 2] and "OUTBOUND PROXY" in lines[end + 3]
    assert rows["reviews-v2-0"][1:4] == ["reviews", "v2", "yes"]
    assert "(no sidecar)" in " ".join(rows["legacy-v1-0"])


def test_curl_from_a_workload_goes_through_its_sidecar(mesh: RunningMesh) -> None:
    done = meshkit(mesh, "curl", "--from", "sleep-v1-0", "http://details:9080/details/0")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["podname"] == "details-v1-0" and answer["ISBN-10"]
    # -i shows the status and headers; a workload name (no instance suffix) means its first instance.
    shown = meshkit(mesh, "curl", "--from", "sleep-v1", "-i", "-H", "end-user: jason",
                    "http://httpbin-nowhere:8000/get")
    # no such service in the mesh, and no Service declares port 8000 for HTTP: no HTTP listener of the
    # sidecar takes it, so it goes as TCP to PassthroughCluster (ALLOW_ANY), but nothing resolves the
    # name (no stand-in, real DNS off): the connection is closed unanswered, Envoy's DF in the TCP line
    assert shown.returncode == 2 and shown.stdout == "", shown
    assert "before an HTTP answer" in shown.stderr, shown.stderr
    tcp = [json.loads(line) for line in meshkit(mesh, "logs", "sleep-v1-0", "--access", "--tail", "0")
           .stdout.splitlines() if '"PassthroughCluster"' in line]
    assert [(e["upstream_cluster"], e["response_flags"], e["method"]) for e in tcp][-1:] == [
        ("PassthroughCluster", "DF", None)], tcp
    page = meshkit(mesh, "curl", "--from", "sleep-v1", "-i", "http://productpage:9080/productpage")
    assert page.returncode == 0
    assert page.stdout.startswith("HTTP/1.1 200") and "x-app-podname: productpage-v1-0" in page.stdout.lower()
    unknown = meshkit(mesh, "curl", "--from", "nobody-v1-0", "http://details:9080/details/0")
    assert unknown.returncode != 0
    assert "--from nobody-v1-0: no such workload" in unknown.stderr
    # The access logs of both sidecars saw the request leave sleep and arrive at details.
    sent = [json.loads(line) for line in meshkit(mesh, "logs", "sleep-v1-0", "--access", "--tail", "0")
            .stdout.splitlines()]
    assert any(e["authority"] == "details:9080" and e["direction"] == "outbound" and e["status"] == 200
               for e in sent)


def test_logs_of_app_sidecar_and_access(mesh: RunningMesh) -> None:
    app = meshkit(mesh, "logs", "ratings-v1-0")
    assert app.returncode == 0, app.stderr
    assert json.loads(app.stdout.splitlines()[0])["instance"] == "ratings-v1-0"
    sidecar = meshkit(mesh, "logs", "ratings-v1-0", "--sidecar")
    assert sidecar.returncode == 0, sidecar.stderr
    meshkit(mesh, "curl", "--from", "sleep-v1-0", "http://ratings:9080/ratings/0")
    access = meshkit(mesh, "logs", "ratings-v1-0", "--access", "--tail", "1")
    entry = json.loads(access.stdout)
    assert entry["direction"] == "inbound" and entry["path"] == "/ratings/0" and entry["status"] == 200
    control = meshkit(mesh, "logs", "control")
    assert control.returncode == 0
    for flags in ([], ["--sidecar"], ["--access"]):
        missing = meshkit(mesh, "logs", "nobody-v1-0", *flags)
        assert missing.returncode != 0 and "no instance 'nobody-v1-0'; known instances:" in missing.stderr
    outside = meshkit(mesh, "logs", "legacy-v1-0", "--sidecar")
    assert outside.returncode != 0 and "legacy-v1-0 has no sidecar" in outside.stderr
    gateway = meshkit(mesh, "logs", "ingressgateway", "--access", "--tail", "0")
    assert gateway.returncode == 0, gateway.stderr


async def test_kill_then_restart_an_instance(mesh: RunningMesh) -> None:
    before = mesh.workload("reviews-v2-0")
    killed = meshkit(mesh, "kill", "reviews-v2-0")
    assert killed.returncode == 0, killed.stderr
    assert not alive(before["pid"])
    after_kill = mesh.workload("reviews-v2-0")
    assert after_kill["healthy"] is False and alive(after_kill["sidecar_pid"])
    status = json.loads(meshkit(mesh, "status", "-o", "json").stdout)
    assert [w["healthy"] for w in status["workloads"] if w["name"] == "reviews-v2-0"] == [False]
    down = await get_one(f"http://127.0.0.1:{before['inbound_port']}/reviews/0")
    assert down.status == 503  # its sidecar is still there, the app behind it is not
    restarted = meshkit(mesh, "restart", "reviews-v2-0")
    assert restarted.returncode == 0, restarted.stderr
    now = mesh.workload("reviews-v2-0")
    assert now["healthy"] is True and now["pid"] != before["pid"] and now["app_port"] == before["app_port"]
    back = await get_one(f"http://127.0.0.1:{before['inbound_port']}/reviews/0")
    assert back.status == 200 and back.podname == "reviews-v2-0"
    assert meshkit(mesh, "kill", "nobody-v1-0").returncode != 0


def test_load_then_top_shows_the_traffic(mesh: RunningMesh) -> None:
    load = meshkit(mesh, "load", "--rps", "20", "--duration", "2")
    assert load.returncode == 0, load.stderr
    numbers = re.search(r"sent (\d+)\s+done (\d+).*errors ([\d.]+)%.*codes (.*)$", load.stdout.strip())
    assert numbers, load.stdout
    assert int(numbers[1]) == int(numbers[2]) >= 36
    assert float(numbers[3]) == 0.0 and numbers[4].strip() == f"200:{numbers[1]}"
    top = meshkit(mesh, "top", "--once", "--window", "30")
    assert top.returncode == 0, top.stderr
    header, *rows = top.stdout.splitlines()
    assert header.split()[:3] == ["SOURCE", "DESTINATION", "VERSION"]
    edges = {(r.split()[0], r.split()[1]) for r in rows}
    assert {("istio-ingressgateway", "productpage"), ("productpage-v1", "details")} <= edges
    counted = 0
    deadline = time.monotonic() + 10.0  # the last second of load shows after the next scrape
    while counted < int(numbers[1]) and time.monotonic() < deadline:
        answer = json.loads(meshkit(mesh, "top", "-o", "json", "--window", "30").stdout)
        counted = sum(e["requests"] for e in answer["edges"]
                      if e["source_workload"] == "istio-ingressgateway")
    assert counted == int(numbers[1])
