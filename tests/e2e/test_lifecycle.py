"""`meshkit up` / `status` / `down` as real subprocesses: the documented status shape, idempotent up,
and no process left behind — also when the CLI that ran `up` was SIGKILLed half-way.

Leftovers are looked for two ways: the pids the mesh recorded, and every process on the machine
whose environment carries this test's ``MESHKIT_HOME`` (the environment every mesh process inherits).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshkit.runtime.ports import PortPlan, busy_ports
from tests.e2e.cli import cli_argv, cli_env, meshkit, processes_of
from tests.e2e.mesh import free_port_bases
from tests.pids import alive

BOOKINFO_INSTANCES = ["productpage-v1-0", "details-v1-0", "reviews-v1-0", "reviews-v2-0", "reviews-v3-0",
                      "ratings-v1-0"]
CLIENT_INSTANCES = ["sleep-v1-0", "legacy-v1-0"]  # legacy: no sidecar
WORKLOAD_KEYS = {"name", "namespace", "service", "version", "pid", "sidecar_pid", "app_port",
                 "container_port", "inbound_port", "outbound_proxy", "admin_port", "healthy", "ip_ranges"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def base() -> int:
    return next(free_port_bases(len(BOOKINFO_INSTANCES) + len(CLIENT_INSTANCES)))


def _status(home: Path, base: int) -> dict[str, Any]:
    done = meshkit(home, base, "status", "-o", "json")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def _recorded_pids(home: Path) -> dict[str, int]:
    try:
        mesh = json.loads((home / "mesh.json").read_text())
    except (OSError, ValueError):  # not written yet, or being replaced right now
        return {}
    return {name: proc["pid"] for name, proc in mesh.get("processes", {}).items()}


def _assert_nothing_left(home: Path, base: int, pids: list[int]) -> None:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and (processes_of(home) or any(alive(p) for p in pids)):
        time.sleep(0.1)
    assert [p for p in pids if alive(p)] == []
    assert processes_of(home) == []
    assert busy_ports(PortPlan(base).all_ports(len(BOOKINFO_INSTANCES) + len(CLIENT_INSTANCES))) == []
    assert not (home / "mesh.json").exists()


def test_up_status_up_again_down(home: Path, base: int) -> None:
    started = meshkit(home, base, "up")
    assert started.returncode == 0, started.stderr
    assert "mesh ready" in started.stdout
    try:
        status = _status(home, base)
        assert set(status) == {"control", "ingress", "ingress_https", "ingress_tcp", "workloads"}
        plan = PortPlan(base)
        assert status["control"] == f"http://127.0.0.1:{plan.control}"
        assert status["ingress"] == f"http://127.0.0.1:{plan.ingress}"
        assert status["ingress_tcp"] == f"127.0.0.1:{plan.ingress_tcp}"
        workloads = status["workloads"]
        assert [w["name"] for w in workloads] == BOOKINFO_INSTANCES
        for w in workloads:
            assert set(w) == WORKLOAD_KEYS
            assert w["healthy"] is True and alive(w["pid"]) and alive(w["sidecar_pid"])
            assert w["outbound_proxy"] == f"http://127.0.0.1:{w['admin_port'] + 1}"
            assert len({w["app_port"], w["inbound_port"], w["admin_port"]}) == 3
        assert workloads[2] | {"pid": 0, "sidecar_pid": 0} == {
            "name": "reviews-v1-0", "namespace": "default", "service": "reviews", "version": "v1", "pid": 0,
            "sidecar_pid": 0, "app_port": base + 380, "container_port": 9080,
            "inbound_port": base + 306, "admin_port": base + 300,
            "outbound_proxy": f"http://127.0.0.1:{base + 301}", "healthy": True, "ip_ranges": {}}
        with urllib.request.urlopen(f"{status['ingress']}/productpage", timeout=30) as page:
            assert page.status == 200
            assert b"Reviews served by" in page.read()

        recorded = _recorded_pids(home)
        assert set(recorded) == {"control", "ingressgateway", *BOOKINFO_INSTANCES,
                                 *(f"{n}.sidecar" for n in BOOKINFO_INSTANCES)}
        assert sorted(processes_of(home)) == sorted(recorded.values())  # nothing unrecorded

        again = meshkit(home, base, "up")
        assert again.returncode == 0, again.stderr
        assert _recorded_pids(home) == recorded  # harmless: the same processes, nothing new
        assert _status(home, base) == status
        same = meshkit(home, base, "up", "--app", "bookinfo")
        assert same.returncode == 0, same.stderr
        # On a running mesh, up adds what is missing (as `meshkit deploy clients`) and restarts nothing.
        added = meshkit(home, base, "up", "--app", "clients")
        assert added.returncode == 0, added.stderr
        names = [w["name"] for w in _status(home, base)["workloads"]]
        assert names == [*BOOKINFO_INSTANCES, *CLIENT_INSTANCES]
        grown = _recorded_pids(home)
        assert {k: grown[k] for k in recorded} == recorded
        assert set(grown) - set(recorded) == {*CLIENT_INSTANCES, "sleep-v1-0.sidecar"}
        recorded = grown
        assert sorted(processes_of(home)) == sorted(recorded.values())
    finally:
        stopped = meshkit(home, base, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert "mesh stopped" in stopped.stdout
    _assert_nothing_left(home, base, list(recorded.values()))
    assert _status(home, base) == {"control": None, "ingress": None, "ingress_https": None,
                                    "ingress_tcp": None, "workloads": []}
    assert "no local mesh is running" in meshkit(home, base, "down").stdout


def _kill_up_midway(home: Path, base: int) -> dict[str, int]:
    """Start `meshkit up`, SIGKILL it once the control plane runs and workloads are starting."""
    cli = subprocess.Popen(cli_argv("up"), env=cli_env(home, base), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and cli.poll() is None:
            recorded = _recorded_pids(home)
            if "control" in recorded and len(recorded) >= 3:  # control plane plus the first workloads
                break
            time.sleep(0.01)
        assert cli.poll() is None, "meshkit up finished before it could be killed"
        cli.send_signal(signal.SIGKILL)
    finally:
        cli.kill()
        cli.wait(timeout=10)
    time.sleep(0.3)  # let whatever it had just spawned show up
    return _recorded_pids(home)


def test_down_after_the_cli_was_killed_midway(home: Path, base: int) -> None:
    recorded = _kill_up_midway(home, base)
    try:
        assert alive(recorded["control"])
        assert processes_of(home), "the killed CLI's processes should outlive it"
    finally:
        stopped = meshkit(home, base, "down")
    assert stopped.returncode == 0, stopped.stderr
    _assert_nothing_left(home, base, list(recorded.values()))


def test_up_after_the_cli_was_killed_midway_replaces_the_partial_mesh(home: Path, base: int) -> None:
    partial = _kill_up_midway(home, base)
    try:
        started = meshkit(home, base, "up")
        assert started.returncode == 0, started.stderr
        status = _status(home, base)
        assert all(w["healthy"] for w in status["workloads"])
        assert len(status["workloads"]) == len(BOOKINFO_INSTANCES)
        assert not any(alive(pid) for pid in partial.values())
        recorded = _recorded_pids(home)
        assert sorted(processes_of(home)) == sorted(recorded.values())
    finally:
        stopped = meshkit(home, base, "down")
    assert stopped.returncode == 0, stopped.stderr
    _assert_nothing_left(home, base, list(recorded.values()))


def test_up_restarts_a_dead_control_plane_alone(home: Path, base: int) -> None:
    """The review: `up` on a mesh whose control plane died stopped everything, then failed on a port."""
    started = meshkit(home, base, "up")
    assert started.returncode == 0, started.stderr
    try:
        before = _recorded_pids(home)
        applied = meshkit(home, base, "apply", "-f", str(Path(__file__).parent / "rules" / "reviews-v2.yaml"))
        assert applied.returncode == 0, applied.stderr
        subprocess.run(["kill", "-9", str(before["control"])], check=True)
        deadline = time.monotonic() + 10
        while alive(before["control"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = meshkit(home, base, "scale", "reviews-v1=2")
        assert refused.returncode != 0 and "meshkit restart control" in refused.stderr
        again = meshkit(home, base, "up")
        assert again.returncode == 0, again.stderr
        after = _recorded_pids(home)
        assert after["control"] != before["control"] and alive(after["control"])
        assert {k: v for k, v in after.items() if k != "control"} == \
            {k: v for k, v in before.items() if k != "control"}  # nothing else was stopped
        listed = meshkit(home, base, "get", "vs", "-o", "json")
        assert listed.returncode == 0 and "reviews" in listed.stdout  # the config survived
        subprocess.run(["kill", "-9", str(after["control"])], check=True)
        restarted = meshkit(home, base, "restart", "control")
        assert restarted.returncode == 0, restarted.stderr
        assert {k: v for k, v in _recorded_pids(home).items() if k != "control"} == \
            {k: v for k, v in before.items() if k != "control"}
    finally:
        stopped = meshkit(home, base, "down")
    assert stopped.returncode == 0, stopped.stderr
