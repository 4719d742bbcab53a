"""Port plan of the local mesh: Istio's well-known ports, as offsets in one block per instance.

Block 0 holds the mesh itself (control plane at +10 like istiod's 15010, the ingress
gateway at +80); instance ``i`` gets block ``i + 1``: sidecar admin +0 (15000), outbound
+1 (15001), inbound +6 (15006), and the app itself at +80 (Bookinfo's 9080). With the
default base 21000, reviews-v1-0 might have its admin on 21300 and its app on 21380:
easy to read in `meshkit status`, and stable from one `meshkit up` to the next.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE = 21000
BLOCK = 100

CONTROL_OFFSET = 10
INGRESS_OFFSET = 80
ADMIN_OFFSET = 0
OUTBOUND_OFFSET = 1
INBOUND_OFFSET = 6
APP_OFFSET = 80


@dataclass(frozen=True)
class InstancePorts:
    admin: int
    outbound: int
    inbound: int
    app: int


@dataclass(frozen=True)
class PortPlan:
    base: int

    @property
    def control(self) -> int:
        return self.base + CONTROL_OFFSET

    @property
    def ingress(self) -> int:
        return self.base + INGRESS_OFFSET

    @property
    def ingress_admin(self) -> int:
        return self.base + ADMIN_OFFSET

    def instance(self, index: int) -> InstancePorts:
        block = self.base + BLOCK * (index + 1)
        return InstancePorts(
            admin=block + ADMIN_OFFSET,
            outbound=block + OUTBOUND_OFFSET,
            inbound=block + INBOUND_OFFSET,
            app=block + APP_OFFSET,
        )

    def all_ports(self, instances: int) -> list[int]:
        ports = [self.control, self.ingress, self.ingress_admin]
        for i in range(instances):
            p = self.instance(i)
            ports += [p.admin, p.outbound, p.inbound, p.app]
        return ports


def busy_ports(ports: list[int], host: str = "127.0.0.1") -> list[int]:
    """The ports of ``ports`` that something already listens on (or that we may not bind)."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(port)
    return busy


LOWEST_BASE = 10_000


def ephemeral_low() -> int:
    """Where the kernel's ephemeral ports start (32768 on Linux by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_bases(instances: int) -> Iterator[int]:
    """Port bases, in random order, whose whole plan for ``instances`` instances is free right now.

    They lie below the ephemeral range, so outgoing connections never take a port of the plan
    later, and away from the default plan a plain `meshkit up` would use. For tests, benchmarks
    and several meshes side by side.
    """
    span = BLOCK * (instances + 2)
    high = min(ephemeral_low(), 65536) - span
    bases = [b for b in range(LOWEST_BASE, high, BLOCK) if abs(b - DEFAULT_BASE) >= span]
    random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little")).shuffle(bases)
    for base in bases:
        if not busy_ports(PortPlan(base).all_ports(instances)):
            yield base
