"""The things the benchmark sends traffic to: the upstream itself, reference proxies, meshkit.

Each target is a small dataclass with ``start(stage)`` / ``stop()``; after ``start`` its ``port``
accepts HTTP with ``Host: bench`` and answers with the upstream's 100-byte body, and
``proxy_roots`` are the processes whose CPU and memory are charged to it. Adding a variant
(issue 5: mTLS between sidecars, nginx -> nginx over TLS) means adding one dataclass here.
"""

from __future__ import annotations

import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import configs, snapshots
from .processes import (
    Child,
    HarnessError,
    Supervisor,
    free_port,
    http_get,
    wait_http_ok,
    wait_listening,
    wait_until,
)
from .tools import Tools

HOST = "bench"
BIND_ATTEMPTS = 3


@dataclass
class Stage:
    """What every target needs to start: the supervisor, the tools, a work dir, the upstream port."""

    supervisor: Supervisor
    tools: Tools
    workdir: Path
    upstream_port: int = 0
    python: str = sys.executable

    def subdir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Target(ABC):
    """One way of reaching the upstream; ``sidecar`` marks meshkit targets (their RSS is checked)."""

    name: str
    description: str
    sidecar: bool = False
    port: int = 0
    children: list[Child] = field(default_factory=list)

    @abstractmethod
    def start(self, stage: Stage) -> None:
        """Start the processes, then wait until a request through ``port`` gets the upstream's body."""

    def stop(self) -> None:
        while self.children:
            self.children.pop().stop()

    @property
    def proxy_roots(self) -> list[Child]:
        return list(self.children)

    def verify(self) -> None:
        status, body = http_get(self.port, HOST)
        if status != 200 or body != configs.BODY.encode():
            raise HarnessError(f"{self.name}: GET / via 127.0.0.1:{self.port} gave {status} "
                               f"with {len(body)} bytes {body[:80]!r}, expected 200 and the 100-byte body")


def start_nginx(stage: Stage, name: str, upstream_port: int | None) -> tuple[Child, int]:
    """One nginx (1 worker): the origin when ``upstream_port`` is None, else a proxy in front of it."""
    if upstream_port is None:
        return start_nginx_config(stage, name, configs.nginx_upstream_conf)
    return start_nginx_config(stage, name,
                              lambda workdir, port: configs.nginx_proxy_conf(workdir, port, upstream_port))


def start_nginx_config(stage: Stage, name: str, conf: Callable[[Path, int], str], *,
                       http_probe: bool = True) -> tuple[Child, int]:
    """One nginx with the config ``conf(workdir, port)`` on a free port, another one when that port
    was taken in between; ready once it answers HTTP (``http_probe=False``: accepts connections)."""
    workdir = stage.subdir(name)
    for _ in range(BIND_ATTEMPTS):
        port = free_port()
        (workdir / "nginx.conf").write_text(conf(workdir, port))
        child = stage.supervisor.spawn(name, configs.nginx_argv(stage.tools.nginx, workdir))
        try:
            if http_probe:
                wait_http_ok(child, port, HOST)
            else:
                wait_listening(child, port)
        except HarnessError:
            child.stop()
            if "Address already in use" in (workdir / "error.log").read_text(errors="replace"):
                continue  # someone took the free port in between: pick another
            raise
        return child, port
    raise HarnessError(f"{name}: no free port after {BIND_ATTEMPTS} attempts")


def start_upstream(stage: Stage) -> Child:
    """The origin every target ends at; sets ``stage.upstream_port``."""
    child, stage.upstream_port = start_nginx(stage, "upstream", None)
    return child


@dataclass
class Direct(Target):
    """wrk straight to the upstream: the baseline that "added latency" is measured against."""

    def start(self, stage: Stage) -> None:
        self.port = stage.upstream_port

    @property
    def proxy_roots(self) -> list[Child]:
        return []


@dataclass
class NginxProxy(Target):
    """``hops`` nginx reverse proxies in a row (1 worker each, keep-alive upstream pools)."""

    hops: int = 1

    def start(self, stage: Stage) -> None:
        next_port = stage.upstream_port
        for hop in reversed(range(self.hops)):
            child, next_port = start_nginx(stage, f"{self.name}-{hop}", next_port)
            self.children.append(child)
        self.port = next_port
        self.verify()


@dataclass
class HAProxy(Target):
    """haproxy in HTTP mode, one thread, keep-alive with server connection reuse."""

    def start(self, stage: Stage) -> None:
        workdir = stage.subdir(self.name)
        for _ in range(BIND_ATTEMPTS):
            self.port = free_port()
            config = workdir / "haproxy.cfg"
            config.write_text(configs.haproxy_conf(self.port, stage.upstream_port))
            child = stage.supervisor.spawn(self.name, configs.haproxy_argv(stage.tools.haproxy, config))
            try:
                wait_http_ok(child, self.port, HOST)
            except HarnessError:
                child.stop()
                if "Address already in use" in child.log_tail(50):
                    continue
                raise
            self.children.append(child)
            self.verify()
            return
        raise HarnessError(f"{self.name}: no free port after {BIND_ATTEMPTS} attempts")


def read_ports(path: Path) -> dict[str, int]:
    """The sidecar's ports file as {"outbound": N, "inbound": N, "admin": N} (``*_port`` keys accepted)."""
    raw: dict[str, Any] = json.loads(path.read_text())
    ports: dict[str, int] = {}
    for role in ("outbound", "inbound", "admin"):
        value = raw.get(role, raw.get(f"{role}_port"))
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{path}: no port for {role!r} in {raw}")
        ports[role] = value
    return ports


def start_sidecar(stage: Stage, name: str, snapshot: dict[str, Any],
                  extra_args: tuple[str, ...] = ()) -> tuple[Child, dict[str, int]]:
    """``python -m meshkit.proxy`` on ephemeral ports with a static snapshot; waits for admin /ready.

    ``extra_args`` go to the sidecar as well (``--tls-dir DIR`` for the mTLS variants)."""
    workdir = stage.subdir(name)
    config, ports_file = workdir / "snapshot.json", workdir / "ports.json"
    config.write_text(json.dumps(snapshot, indent=2))
    ports_file.unlink(missing_ok=True)
    argv = [stage.python, "-m", "meshkit.proxy", "--config", str(config), "--address", "127.0.0.1",
            "--outbound-port", "0", "--inbound-port", "0", "--admin-port", "0",
            "--access-log", "off", "--ports-file", str(ports_file), *extra_args]
    child = stage.supervisor.spawn(name, argv)
    wait_until(child, f"ports file {ports_file}", lambda: bool(read_ports(ports_file)))
    ports = read_ports(ports_file)
    wait_until(child, "admin /ready", lambda: http_get(ports["admin"], "localhost", "/ready")[0] == 200)
    return child, ports


@dataclass
class MeshkitSidecar(Target):
    """One meshkit sidecar: its outbound listener routes ``bench`` straight to the upstream."""

    sidecar: bool = True
    extra_args: tuple[str, ...] = ()  # e.g. ("--concurrency", "2")

    def start(self, stage: Stage) -> None:
        dest = snapshots.Destination(port=stage.upstream_port, has_sidecar=False)
        child, ports = start_sidecar(stage, self.name, snapshots.client_snapshot(dest, stage.upstream_port),
                                     self.extra_args)
        self.children.append(child)
        self.port = ports["outbound"]
        self.verify()


@dataclass
class MeshkitMesh(Target):
    """The mesh path: client sidecar outbound -> server sidecar inbound -> upstream."""

    sidecar: bool = True
    extra_args: tuple[str, ...] = ()  # both sidecars, e.g. ("--concurrency", "2")

    def start(self, stage: Stage) -> None:
        server, server_ports = start_sidecar(stage, f"{self.name}-server",
                                             snapshots.server_snapshot(stage.upstream_port), self.extra_args)
        self.children.append(server)
        dest = snapshots.Destination(port=server_ports["inbound"], has_sidecar=True)
        client_snapshot = snapshots.client_snapshot(dest, stage.upstream_port)
        client, client_ports = start_sidecar(stage, f"{self.name}-client", client_snapshot, self.extra_args)
        self.children.append(client)
        self.port = client_ports["outbound"]
        self.verify()


def all_targets(concurrency: int = 1) -> list[Target]:
    """Every target, references first. Names are what ``--targets`` selects. ``concurrency`` > 1 adds
    ``meshkit-cN`` and ``meshkit-mesh-cN``: the same sidecars with ``--concurrency N`` (worker processes;
    their CPU and RSS are the whole process tree's)."""
    extra: list[Target] = []
    if concurrency > 1:
        workers = ("--concurrency", str(concurrency))
        extra = [
            MeshkitSidecar(f"meshkit-c{concurrency}",
                           f"meshkit sidecar, outbound, --concurrency {concurrency}", extra_args=workers),
            MeshkitMesh(f"meshkit-mesh-c{concurrency}",
                        f"two meshkit sidecars with --concurrency {concurrency}", extra_args=workers),
        ]
    return [
        Direct("direct", "wrk -> upstream nginx (baseline)"),
        NginxProxy("nginx", "nginx reverse proxy, 1 worker, upstream keepalive"),
        HAProxy("haproxy", "haproxy http mode, 1 thread, keep-alive"),
        MeshkitSidecar("meshkit", "meshkit sidecar (outbound), realistic route table"),
        NginxProxy("nginx-x2", "two nginx proxies in a row (reference for the mesh path)", hops=2),
        MeshkitMesh("meshkit-mesh", "two meshkit sidecars: outbound A -> inbound B -> upstream"),
        *extra,
    ]
