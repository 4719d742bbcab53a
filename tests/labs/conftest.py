"""A fresh local mesh for the lab tests: its own MESHKIT_HOME and a free port base, shared by the module."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.runtime import catalog
from meshkit.runtime.local import LocalMesh
from meshkit.runtime.ports import PortPlan, busy_ports
from meshkit.runtime.state import StateDir

LABS = Path(__file__).resolve().parents[2] / "labs"


def free_base(tries: int = 50) -> int:
    instances = sum(s.replicas for s in catalog.resolve(["bookinfo"], {}))
    for _ in range(tries):
        base = random.randrange(30000, 60000, 100)
        if not busy_ports(PortPlan(base).all_ports(instances)):
            return base
    raise RuntimeError("no free block of ports for a lab mesh")


@pytest.fixture(scope="session")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start the mesh once; yield the environment a kernel needs to find it (also set in os.environ)."""
    home = tmp_path_factory.mktemp("meshkit-lab-home")
    base = free_base()
    env = {"MESHKIT_HOME": str(home), "MESHKIT_PORT_BASE": str(base)}
    saved = {k: os.environ.get(k) for k in (*env, "MESHKIT_LAB_STRICT", "MESHKIT_LAB_RETRY_FOR",
                                             "MESHKIT_INSTRUCTOR")}
    os.environ.update(env)
    mesh = LocalMesh(StateDir.open(home))
    try:
        mesh.up(base_port=base, timeout=60.0)
        yield env
    finally:
        mesh.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
