"""meshkit.lab.history (lab 09) against real sockets and the real lab mesh: the in-process client's
retries and timeouts, the shared node proxy as a real process (and that it never outlives its
parent), and the three shapes measured with checks that fail before and pass after."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.lab import connect
from meshkit.lab.checks import CheckFailed
from meshkit.lab.display import LabError
from meshkit.lab.history import (
    SHAPES,
    Comparison,
    NodeProxy,
    RequestFailed,
    ResilientClient,
    node_snapshot,
    percentile,
    run_bounded,
)
from meshkit.lab.history.node_agent import fetch_json
from meshkit.lab.mesh import Mesh
from tests.pids import alive

SLOW_S = 2.0  # far above the 0.2 s per-try timeouts below, so a busy machine cannot blur the two


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        behaviour = self.server.behaviour  # type: ignore[attr-defined]
        if behaviour == "slow":
            time.sleep(SLOW_S)
        status = 503 if behaviour == "503" else 200
        body = json.dumps({"podname": f"port-{self.server.server_port}"}).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        return None


@pytest.fixture
def servers() -> Iterator[dict[str, int]]:
    """Three real HTTP servers on 127.0.0.1: one answering 200, one 503, one taking SLOW_S seconds."""
    started = []
    ports = {}
    for behaviour in ("200", "503", "slow"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.behaviour = behaviour  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        ports[behaviour] = server.server_port
    yield ports
    for server in started:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_library_retries_a_503_on_the_next_endpoint(servers: dict[str, int]) -> None:
    good = ("127.0.0.1", servers["200"])
    client = ResilientClient([("127.0.0.1", servers["503"]), good, good])
    answers = [client.get("/x") for _ in range(10)]
    client.close()
    assert [a.status for a in answers] == [200] * 10
    assert [a.tries for a in answers] == [2, 1] * 5  # round-robin: every other request hits the 503 first
    assert client.retries == 5 and client.requests == 10 and client.failures == 0


def test_the_library_gives_up_naming_the_endpoint_and_the_cause(servers: dict[str, int]) -> None:
    closed = _closed_port()
    refused = ResilientClient([("127.0.0.1", closed)], attempts=2)
    with pytest.raises(RequestFailed, match=f"2 tries, the last: 127.0.0.1:{closed}/a failed"):
        refused.get("/a")
    assert refused.failures == 1 and refused.retries == 1
    slow = ResilientClient([("127.0.0.1", servers["slow"])], attempts=2, per_try_timeout=0.2)
    with pytest.raises(RequestFailed, match=r"2 tries.*timed out"):  # two 0.2 s tries cut, not SLOW_S waited
        slow.get("/b")
    slow.close()
    only_503 = ResilientClient([("127.0.0.1", servers["503"])], attempts=3)
    assert only_503.get("/c").status == 503 and only_503.retries == 2  # the last answer is returned
    only_503.close()


@pytest.mark.parametrize(("kwargs", "field"), [({"endpoints": []}, "endpoints"),
                                               ({"attempts": 0}, "attempts"),
                                               ({"per_try_timeout": 0}, "per_try_timeout")])
def test_the_library_refuses_bad_settings_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ResilientClient(**{"endpoints": [("127.0.0.1", 1)], **kwargs})


def test_runs_are_bounded_in_count_and_time(servers: dict[str, int]) -> None:
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0
    with pytest.raises(ValueError, match="requests"):
        run_bounded("x", ResilientClient([("127.0.0.1", 1)]).get, "/", requests=0, max_seconds=1)
    with pytest.raises(ValueError, match="max_seconds"):
        run_bounded("x", ResilientClient([("127.0.0.1", 1)]).get, "/", requests=1, max_seconds=31)
    slow = ResilientClient([("127.0.0.1", servers["slow"])], per_try_timeout=5)
    result = run_bounded("slow", slow.get, "/", requests=100, max_seconds=1.5, warmup=0)
    slow.close()
    assert 1 <= result.requests <= 3  # of 100 asked for: max_seconds stopped the run
    refused = ResilientClient([("127.0.0.1", _closed_port())], attempts=1)
    result = run_bounded("down", refused.get, "/", requests=5, max_seconds=5)
    assert result.failed == 5 and result.ok == 0 and "failed" in result.reasons[0]


@pytest.fixture(scope="module")
def mesh(lab_env: dict[str, str]) -> Mesh:
    return connect(start=False)


def _dump_and_ports(mesh: Mesh) -> tuple[dict[str, Any], dict[str, int]]:
    row = next(w for w in mesh.workloads() if w["name"] == "productpage-v1-0")
    dump = fetch_json(f"http://127.0.0.1:{row['admin_port']}/config_dump")
    return dump, {w["name"]: int(w["app_port"]) for w in mesh.workloads()}


def test_the_node_snapshot_sends_every_endpoint_to_the_app_port(mesh: Mesh) -> None:
    dump, app_ports = _dump_and_ports(mesh)
    snap = node_snapshot(dump, app_ports)
    endpoints = [e for c in snap["clusters"].values() for e in c["endpoints"]]
    assert endpoints and {e["port"] for e in endpoints} <= set(app_ports.values())
    assert all(c["tls"]["mode"] == "DISABLE" for c in snap["clusters"].values())
    assert snap["node"]["identity"] is None and snap["inbound"] is None
    sidecar_ports = {e["port"] for c in dump["snapshot"]["clusters"].values() for e in c["endpoints"]}
    assert not sidecar_ports & set(app_ports.values())  # the sidecar's own snapshot points at sidecars
    missing = {k: v for k, v in app_ports.items() if k != "details-v1-0"}
    no_app_port = r"clusters\.details\.default\|.*endpoints\[0\]: instance 'details-v1-0'"
    with pytest.raises(LabError, match=no_app_port):
        node_snapshot(dump, missing)


def test_the_node_proxy_stops_when_its_with_block_fails_and_when_its_parent_dies(
        mesh: Mesh, tmp_path: Path) -> None:
    dump, app_ports = _dump_and_ports(mesh)
    snap = node_snapshot(dump, app_ports)
    with pytest.raises(RuntimeError), NodeProxy(snap) as node:
        pid = node.pid
        assert node.alive() and node.stats()["config"]["applied"] == 1
        assert node.workdir is None  # removed once ready: nothing to leak even on SIGKILL
        raise RuntimeError("a failing cell")
    assert pid is not None and not Path(f"/proc/{pid}").exists() and node.workdir is None
    (tmp_path / "snap.json").write_text(json.dumps(snap))
    script = ("import json, sys, time\nfrom meshkit.lab.history import NodeProxy\n"
              "node = NodeProxy(json.load(open(sys.argv[1]))).start()\n"
              "print(node.pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "snap.json")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert Path(f"/proc/{child}").exists()
    finally:
        parent.send_signal(signal.SIGKILL)  # no atexit, no clean-up: only the kernel's death signal
        parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(child):
        time.sleep(0.05)
    survived = alive(child)
    if survived:  # do not leave it behind when the test fails
        os.kill(child, signal.SIGKILL)
    assert not survived, f"the node proxy {child} outlived the process that started it"


def _eventually(check: Any, mesh: Mesh, seconds: float = 8.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            check(mesh)
            return
        except CheckFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_three_shapes_fail_their_checks_before_and_pass_after_measuring(mesh: Mesh) -> None:
    with Comparison(mesh, min_requests=60) as bench:
        for check, wanted in ((bench.check_library, "bench.library()"),
                              (bench.check_node_agent, "no node proxy is running"),
                              (bench.check_sidecar, "bench.sidecar()")):
            with pytest.raises(CheckFailed, match=wanted.replace("(", r"\(").replace(")", r"\)")):
                check(mesh)
        assert [r["requests"] for r in bench.rows()] == ["not measured yet"] * 3
        chart = bench.chart()

        library = bench.library(requests=100, max_seconds=10)
        assert library.ok == library.from_app == 100 and library.extra["proxies_on_path"] == []
        bench.check_library(mesh)

        node = bench.node_agent(requests=100, max_seconds=10)
        assert node.ok == 100 and bench.node is not None and bench.node.alive()
        served = bench.node.stats()["listeners"]["outbound"]["downstream_rq_2xx"]
        assert served >= 100  # the node proxy's own counter, warm-up requests included
        assert node.extra["proxies_on_path"] == ["node proxy"]
        bench.check_node_agent(mesh)

        sidecar = bench.sidecar(requests=100, max_seconds=10)
        assert sidecar.ok == 100
        assert sidecar.extra["proxies_on_path"] == ["productpage-v1-0 sidecar", "details sidecar"]
        _eventually(bench.check_sidecar, mesh)

        rows = {r["shape"]: r for r in bench.rows()}
        assert [rows[s]["proxies on path"] for s in SHAPES] == [0, 1, 2]
        assert rows["library"]["proxy processes"] == 0 and rows["node agent"]["proxy processes"] == 1
        with_sidecars = [w for w in mesh.workloads() if w.get("sidecar_pid")]  # legacy (clients) has none
        assert rows["sidecar"]["proxy processes"] == len(with_sidecars)
        assert rows["node agent"]["proxy RSS MiB"] > 5 and rows["sidecar"]["proxy RSS MiB"] > 5 * 6
        assert all(y > 0 for y in chart.data[0].y) and chart.data[2].y[0] == 0 and chart.data[2].y[1] > 0
        assert "client → productpage-v1-0 sidecar → details sidecar → app" in str(bench.table())
        identities = [rows[s]["caller identity at the destination"] for s in SHAPES]
        assert identities[2] == "spiffe://cluster.local/ns/default/sa/bookinfo-productpage (mutual_tls)"
        assert all(i.startswith("none") for i in identities[:2])

        pooled = bench.interleaved(rounds=2, requests=40, max_seconds=5)  # alternating order, pooled
        assert [r["requests"] for r in pooled.rows] == [80, 80, 80]
        assert [r["proxies on path"] for r in pooled.rows] == [0, 1, 2]
        bench.check_library(mesh)
        bench.check_node_agent(mesh)
        _eventually(bench.check_sidecar, mesh)
        with pytest.raises(LabError, match=r"rounds must be 1\.\.5"):
            bench.interleaved(rounds=9)

        pid = bench.node.pid
    assert pid is not None and not alive(pid)
    with pytest.raises(CheckFailed, match="no node proxy is running"):
        bench.check_node_agent(mesh)


def test_a_node_agent_run_that_bypassed_the_node_proxy_fails_its_check(mesh: Mesh) -> None:
    """The check reads the proxy's counter, not the run's own numbers: a run through another
    path (here: a restarted node proxy that served nothing) does not pass."""
    with Comparison(mesh, min_requests=30) as bench:
        bench.node_agent(requests=40, max_seconds=10)
        bench.check_node_agent(mesh)
        assert bench.node is not None
        bench.node.stop()
        bench.start_node_proxy()  # a fresh process: its counters start at zero
        with pytest.raises(CheckFailed, match=r"counted 0 answered requests, fewer than the 40"):
            bench.check_node_agent(mesh)


def test_bad_settings_name_the_field_and_start_nothing(mesh: Mesh) -> None:
    with pytest.raises(LabError, match="Comparison service: no healthy instance of 'nope'"):
        Comparison(mesh, service="nope").library(requests=10)
    with pytest.raises(LabError, match="Comparison client: no instance 'nope-v1-0'"):
        Comparison(mesh, client="nope-v1-0").sidecar(requests=10)
    bench = Comparison(mesh)
    with pytest.raises(LabError, match=r"bench\.library: requests: expected 1\.\.5000, got 0"):
        bench.library(requests=0)
    with pytest.raises(LabError, match=r"bench\.sidecar: max_seconds"):
        bench.sidecar(requests=10, max_seconds=0)
    assert bench.node is None and bench.results == {}
