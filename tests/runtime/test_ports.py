"""The local mesh's port plan and the search for free blocks that tests and benchmarks share."""

from __future__ import annotations

import socket

from meshkit.runtime.ports import DEFAULT_BASE, PortPlan, busy_ports, ephemeral_low, free_bases


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
