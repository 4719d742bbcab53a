"""Port plan of the local mesh: Istio's well-known ports, as offsets in one block per instance.

Block 0 holds the mesh itself (control plane at +10 like istiod's 15010, the ingress
gateway at +80 for HTTP, +43 for HTTPS and +44 for its TCP servers (Istio's 31400, port ``tcp``
of the ingress Service), its admin at +0; the egress gateway, when deployed, at +82 and admin +2);
instance ``i`` gets block ``i + 1``: sidecar admin
+0 (15000), outbound +1 (15001), inbound +6 (15006), and the app itself at +80 (Bookinfo's 9080). With the
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
INGRESS_HTTPS_OFFSET = 43  # the ingress gateway's HTTPS listener (Istio's 443: HTTPS Gateway servers)
INGRESS_TCP_OFFSET = 44  # the ingress gateway's TCP listener (Istio's 31400, port tcp: TCP Gateway servers)
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
    def ingress_https(self) -> int:
        return self.base + INGRESS_HTTPS_OFFSET

    @property
    def ingress_tcp(self) -> int:
        return self.base + INGRESS_TCP_OFFSET

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
        ports = [self.control, self.ingress, self.ingress_https, self.ingress_tcp, self.ingress_admin]
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


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral ports (32768-60999 on Linux by default): any outgoing connection may
    take one of them at any moment, so a listening port in there can be stolen."""
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text().split()[:2])
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def ephemeral_low() -> int:
    """Where the kernel's ephemeral ports start (32768 on Linux by default)."""
    return ephemeral_range()[0]


def port_holders(ports: list[int]) -> dict[int, str]:
    """Which program listens on each of ``ports`` (127.0.0.1 / any address), as far as /proc tells
    (another user's processes are not visible: then the port is named without a program)."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A":  # LISTEN
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in ports:
                    inodes[fields[9]] = port
    found: dict[int, str] = {}
    if not inodes:
        return found
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            for fd in (pid_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found[inodes[target[8:-1]]] = f"pid {pid_dir.name} ({cmd.strip()[:80]})"
        except OSError:
            continue
    return found


def name_holders(busy: list[int]) -> str:
    """The first eight of ``busy`` ports, each with the program holding it where /proc tells."""
    holders = port_holders(busy)
    return ", ".join(f"{p} (held by {holders[p]})" if p in holders else str(p) for p in busy[:8])


def check_port_plan(ports: list[int], base: int, what: str = "the mesh's ports") -> str | None:
    """Why ``ports`` (planned from ``base``) cannot be used, with the fix; None when they can."""
    low, high = ephemeral_range()
    inside = [p for p in ports if low <= p <= high]
    if inside:
        return (f"port base {base} puts {what} ({min(inside)}..{max(inside)}) inside the kernel's ephemeral "
                f"range {low}-{high} ({EPHEMERAL_RANGE_FILE}), where any outgoing connection may take them; "
                f"choose a base below {low - (max(ports) - base) - 1} with MESHKIT_PORT_BASE or --port-base")
    busy = busy_ports(ports)
    if busy:
        return (f"{what} {name_holders(busy)} on 127.0.0.1 are in use; stop what holds them "
                f"(`meshkit down` if it is an earlier mesh, else the program named) or choose another "
                f"base with MESHKIT_PORT_BASE (now {base})")
    return None


SLICE_ENV = "MESHKIT_PORT_SLICE"  # "I/N": keep to the I-th of N equal slices of the range


def _slice(low: int, top: int) -> tuple[int, int]:
    """``$MESHKIT_PORT_SLICE`` ("I/N", 0 <= I < N) narrows [low, top) to its I-th of N slices, so
    processes that each pick plans at random (parallel test workers) never pick overlapping ones,
    even for blocks one of them checked free but fills only later. Unset or malformed: the whole."""
    index, sep, count = os.environ.get(SLICE_ENV, "").partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        return low, top
    width = (top - low) // int(count) // BLOCK * BLOCK
    return low + int(index) * width, low + (int(index) + 1) * width


def free_bases(instances: int) -> Iterator[int]:
    """Port bases, in random order, whose whole plan for ``instances`` instances is free right now.

    They lie below the ephemeral range, so outgoing connections never take a port of the plan
    later, and away from the default plan a plain `meshkit up` would use. For tests, benchmarks
    and several meshes side by side.
    """
    span = BLOCK * (instances + 2)
    low, top = _slice(LOWEST_BASE, min(ephemeral_low(), 65536))
    bases = [b for b in range(low, top - span, BLOCK) if abs(b - DEFAULT_BASE) >= span]
    random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little")).shuffle(bases)
    for base in bases:
        if not busy_ports(PortPlan(base).all_ports(instances)):
            yield base
