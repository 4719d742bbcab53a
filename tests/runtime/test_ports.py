"""The local mesh's port plan and the search for free blocks that tests and benchmarks share."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from meshkit.runtime.local import LocalMesh, MeshError
from meshkit.runtime.ports import (
    DEFAULT_BASE,
    PortPlan,
    busy_ports,
    ephemeral_low,
    ephemeral_range,
    free_bases,
)
from meshkit.runtime.state import StateDir


def test_free_bases_are_free_below_the_ephemeral_range_and_away_from_the_default() -> None:
    for base in list(free_bases(6))[:5]:
        plan = PortPlan(base).all_ports(6)
        assert not busy_ports(plan)
        assert max(plan) < ephemeral_low()
        assert abs(base - DEFAULT_BASE) >= 800


def test_a_taken_port_makes_its_block_busy() -> None:
    base = next(free_bases(6))
    port = PortPlan(base).instance(3).inbound
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert busy_ports(PortPlan(base).all_ports(6)) == [port]


def test_a_base_inside_the_ephemeral_range_is_refused_with_the_reason(tmp_path: Path) -> None:
    low, high = ephemeral_range()
    mesh = LocalMesh(StateDir.open(tmp_path / "home"))
    with pytest.raises(MeshError, match=rf"inside the kernel's ephemeral range {low}-{high}") as refused:
        mesh.up(base_port=low + 1000)
    assert "MESHKIT_PORT_BASE" in str(refused.value)
    assert mesh.record() is None  # refused before anything started


def test_a_port_held_by_another_program_is_named_with_a_fix(tmp_path: Path) -> None:
    base = next(free_bases(6))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", PortPlan(base).control))
        holder.listen()
        with pytest.raises(MeshError) as refused:
            LocalMesh(StateDir.open(tmp_path / "home")).up(base_port=base)
    text = str(refused.value)
    assert f"{PortPlan(base).control} (held by pid {os.getpid()} (" in text
    assert "stop what holds them" in text and "MESHKIT_PORT_BASE" in text
