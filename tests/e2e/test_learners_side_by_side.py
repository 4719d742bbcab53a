"""Several learners on one host (a JupyterHub): each `meshkit up` without MESHKIT_PORT_BASE finds a
free port plan when the default one is taken, and every later command of that learner finds it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.runtime.ports import DEFAULT_BASE, PortPlan
from tests.e2e.cli import cli_argv, processes_of

CONTROL_PORT = PortPlan(DEFAULT_BASE).control


def _learner(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``meshkit ARGS`` as a learner runs it: their own MESHKIT_HOME, no MESHKIT_PORT_BASE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env.update(MESHKIT_HOME=str(home), NO_COLOR="1", COLUMNS="200")
    return subprocess.run(cli_argv(*args), env=env, capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture
def default_plan_taken() -> Iterator[None]:
    """Another learner's control plane holds the default plan's control port (or something else does)."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", CONTROL_PORT))
        holder.listen()
    except OSError:
        pass  # already in use by someone else: taken either way
    try:
        yield
    finally:
        holder.close()


def test_second_learner_gets_a_free_plan_and_keeps_it(tmp_path: Path, default_plan_taken: None) -> None:
    homes = [tmp_path / "alice", tmp_path / "bob"]
    try:
        for home in homes:
            started = _learner(home, "up", "--app", "clients")
            assert started.returncode == 0, started.stderr + started.stdout
        controls = []
        for home in homes:
            status = _learner(home, "status", "-o", "json")
            assert status.returncode == 0, status.stderr
            found = json.loads(status.stdout)
            assert found["control"] != f"http://127.0.0.1:{CONTROL_PORT}"  # the default plan is taken
            assert all(w["healthy"] for w in found["workloads"])
            recorded = json.loads((home / "mesh.json").read_text())["base_port"]
            assert found["control"] == f"http://127.0.0.1:{PortPlan(recorded).control}"
            controls.append(found["control"])
        assert controls[0] != controls[1]  # two learners, two plans
        for home in homes:  # a later command of each learner reaches their own mesh, no env var needed
            curl = _learner(home, "curl", "--from", "sleep-v1-0", "http://sleep/healthz")
            assert curl.returncode == 0, curl.stderr
    finally:
        for home in homes:
            _learner(home, "down")
            assert processes_of(home) == []
