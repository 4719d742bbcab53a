"""A fresh local mesh for the lab tests (its own MESHKIT_HOME and a free port base, shared by the session)
and the `mesh` fixture every test module connects with."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.lab import connect
from meshkit.lab.mesh import SETTLE, Mesh
from meshkit.lab.progress import ProgressStore
from meshkit.runtime import catalog
from meshkit.runtime.local import LocalMesh, MeshError
from meshkit.runtime.ports import free_bases
from meshkit.runtime.state import StateDir
from meshkit.workshop import client as workshop_client
from tests.waiting import wait_until

LABS = Path(__file__).resolve().parents[2] / "labs"


def as_first_time_learner(env: dict[str, str], lab: str) -> None:
    """The session's labs share one MESHKIT_HOME: forget ``lab``'s progress and predictions, which
    another test may have recorded (a reference edition run, a catalog check)."""
    ProgressStore(StateDir.open(env["MESHKIT_HOME"])).reset(lab)


def lab_progress(env: dict[str, str], lab: str) -> dict[str, dict[str, object]]:
    """What the kernels' checks recorded for ``lab`` (step id -> passed, reason, at)."""
    data = json.loads((Path(env["MESHKIT_HOME"]) / "lab" / "progress.json").read_text())
    return dict(data.get(lab, {}))


def leave_workshops(env: dict[str, str]) -> None:
    """Forget the workshop identity a test joined with, so later tests are self-study learners again."""
    (Path(env["MESHKIT_HOME"]) / "workshop" / workshop_client.CLIENT_DB).unlink(missing_ok=True)


def free_base() -> int:
    """A port block free now and below the ephemeral range (outgoing connections cannot take it later)."""
    instances = sum(s.replicas for s in catalog.resolve(["bookinfo"], {}))
    return next(free_bases(instances))


@pytest.fixture(scope="session")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start the mesh once; yield the environment a kernel needs to find it (also set in os.environ)."""
    home = tmp_path_factory.mktemp("meshkit-lab-home")
    base = free_base()
    env = {"MESHKIT_HOME": str(home), "MESHKIT_PORT_BASE": str(base)}
    saved = {k: os.environ.get(k) for k in (*env, "MESHKIT_LAB_STRICT", "MESHKIT_LAB_RETRY_FOR",
                                             "MESHKIT_INSTRUCTOR")}
    mesh = LocalMesh(StateDir.open(home))
    try:
        for attempt in range(3):  # another suite may take the block between the check and the bind
            env["MESHKIT_PORT_BASE"] = str(base)
            os.environ.update(env)
            try:
                mesh.up(base_port=base, timeout=90.0)
                break
            except MeshError:
                if attempt == 2:
                    raise
                base = free_base()
        yield env
    finally:
        mesh.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def mesh(lab_env: dict[str, str]) -> Mesh:
    """The lab mesh as a notebook connects to it, its config back at the baseline (a module may
    override this fixture, e.g. with one that also deploys the clients)."""
    m = connect()
    m.reset()
    return m



@pytest.fixture(scope="module")
def clients_mesh(lab_env: dict[str, str]) -> Iterator[Mesh]:
    """The lab mesh with the clients (sleep, legacy) deployed, config reset before and after the module."""
    m = connect(start=False)
    m.reset()
    m.deploy("clients")
    yield m
    m.reset()

def settle(mesh: Mesh, quiet: float = 2.0, timeout: float = 20.0) -> None:
    """Wait until the telemetry shows no request in the last ``quiet`` seconds (bounded).

    Telemetry scrapes every second: requests an earlier test sent just before a test's start
    are counted up to a second later, inside windows that begin at that start. Tests that
    compare counts over a window with the load they sent settle first.
    """
    wait_until(lambda: not any(e["requests"] for e in mesh.telemetry(quiet).get("edges", [])), timeout,
               "a quiet mesh (an earlier test left a load running?)", interval=0.5)


def window_open(mesh: Mesh, extra: float = 0.0) -> None:
    """Wait until the checks' telemetry window has begun (and spans ``extra`` seconds): the checks
    count traffic from `Mesh.counting_since` (the scrape after the latest change took effect)."""
    wait_until(lambda: time.time() >= mesh.counting_since() + extra, SETTLE + extra + 10,
               "the checks' window after the latest change", interval=0.05)


def counted(mesh: Mesh, service: str, at_least: int, since: float, *, reporter: str = "destination") -> int:
    """Wait until the telemetry counts ``at_least`` requests to ``service`` since wall-clock ``since``
    (as ``reporter`` saw them): everything sent before is scraped. Returns the count."""
    def total() -> int:
        edges = mesh.telemetry(time.time() - since + 1, reporter=reporter).get("edges", [])
        count = sum(e["requests"] for e in edges if e["destination_service"] == service)
        return count if count >= at_least else 0

    return wait_until(total, 20, f"{at_least} requests to {service} in the telemetry", interval=0.25)
