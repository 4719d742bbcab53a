"""The local mesh's port plan and the search for free blocks that tests and benchmarks share."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from meshkit.runtime.local import LocalMesh, MeshError
from meshkit.runtime.ports import (
    BLOCK,
    DEFAULT_BASE,
    SLICE_ENV,
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
    with socket.socket() as holder:
        # a block free when listed can be taken before the bind (another test's mesh): the next one
        for base in free_bases(6):
            try:
                holder.bind(("127.0.0.1", PortPlan(base).control))
                break
            except OSError:
                continue
        else:
            pytest.fail("no free port block below the ephemeral range to hold")
        holder.listen()
        with pytest.raises(MeshError) as refused:
            LocalMesh(StateDir.open(tmp_path / "home")).up(base_port=base)
    text = str(refused.value)
    assert f"{PortPlan(base).control} (held by pid {os.getpid()} (" in text
    assert "stop what holds them" in text and "MESHKIT_PORT_BASE" in text


def test_a_port_slice_keeps_every_plan_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel test workers ($MESHKIT_PORT_SLICE "I/N") pick plans that can never overlap."""
    instances = 6
    span = BLOCK * (instances + 2)
    chosen = {}
    for index in (0, 1):
        monkeypatch.setenv(SLICE_ENV, f"{index}/2")
        chosen[index] = list(free_bases(instances))[:20]
        assert chosen[index]
    low_top = max(chosen[0]) + span
    assert low_top <= min(chosen[1]), (max(chosen[0]), min(chosen[1]))
    monkeypatch.setenv(SLICE_ENV, "nonsense")
    assert next(free_bases(instances))  # malformed: the whole range


def test_block_zero_gives_every_listener_of_the_mesh_its_own_port() -> None:
    from meshkit.runtime import egressgw, ports  # noqa: PLC0415

    plan = PortPlan(DEFAULT_BASE)
    block_zero = {"control": plan.control, "ingress": plan.ingress, "ingress https": plan.ingress_https,
                  "ingress tcp": plan.ingress_tcp, "ingress admin": plan.ingress_admin,
                  "egress gateway": egressgw.ports(DEFAULT_BASE)[0],
                  "egress admin": egressgw.ports(DEFAULT_BASE)[1]}
    assert len(set(block_zero.values())) == len(block_zero), block_zero
    assert all(DEFAULT_BASE <= port < DEFAULT_BASE + BLOCK for port in block_zero.values())
    assert plan.ingress_tcp == DEFAULT_BASE + ports.INGRESS_TCP_OFFSET == 21044  # Istio's 31400 (port tcp)
    assert plan.ingress_tcp in plan.all_ports(0)  # checked free before `up`, like the others
