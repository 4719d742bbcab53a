"""Two network namespaces as a "pod" and its "peer", for the capture, passthrough and probe tests.

`Namespaces` builds a pod namespace (10.77.0.2) and a peer namespace (10.77.0.1) joined by a
veth pair, starts `netns_probe.py` listeners in them and connects unmodified clients; the
``namespaces`` fixture skips (with the reason) where root, ``ip``, ``iptables`` or ``setpriv``
are missing, and always deletes what it created.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "operator" / "meshkit-init.sh"
PROBE = Path(__file__).with_name("netns_probe.py")
POD_IP, PEER_IP = "10.77.0.2", "10.77.0.1"
SERVICE_IP = "10.96.0.10"  # a ClusterIP-like address nobody owns: only the redirect can answer


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "iptables", "setpriv"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install -y iptables iproute2 util-linux)"
    return None


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


class Namespaces:
    """A pod namespace and a peer namespace joined by a veth pair, with probe listeners."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.pod, self.peer = f"mk18-pod-{tag}", f"mk18-peer-{tag}"
        self.listeners: list[subprocess.Popen[str]] = []
        self._veth = (f"mkp{tag}", f"mkq{tag}")

    def create(self) -> None:
        a, b = self._veth
        _run("ip", "netns", "add", self.pod)
        _run("ip", "netns", "add", self.peer)
        _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        _run("ip", "link", "set", a, "netns", self.pod)
        _run("ip", "link", "set", b, "netns", self.peer)
        for ns, dev, ip in ((self.pod, a, POD_IP), (self.peer, b, PEER_IP)):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
        _run("ip", "-n", self.pod, "route", "add", "default", "via", PEER_IP)

    def listen(self, ns: str, *ports: int) -> None:
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(PROBE), "listen", ns, *map(str, ports)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.listeners.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()  # the probe exits by itself after 60 s, so this is bounded
        assert line.strip() == "ready", f"listener in {ns} did not start: {line!r} {process.stderr.read()}"

    def connect(self, ns: str, host: str, port: int, *, uid: int | None = None) -> str:
        return self.probe(ns, "connect", host, str(port), uid=uid)

    def probe(self, ns: str, *argv: str, uid: int | None = None) -> str:
        """Run ``netns_probe.py ARGV`` in ``ns`` (as ``uid``); its output."""
        result = subprocess.run(
            [*self.prefix(ns, uid), sys.executable, "-I", str(PROBE), *argv],
            capture_output=True, text=True, timeout=20, check=False,
        )
        return (result.stdout + result.stderr).strip()

    @staticmethod
    def prefix(ns: str, uid: int | None = None) -> list[str]:
        prefix = ["ip", "netns", "exec", ns]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return prefix

    def start(self, ns: str, argv: list[str], *, uid: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """A long-running process in ``ns`` (stopped with the namespaces)."""
        process = subprocess.Popen([*self.prefix(ns, uid), *argv], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, env=env)
        self.listeners.append(process)
        return process

    def listen_tls(self, ns: str, port: int, cert: str, key: str) -> None:
        process = subprocess.Popen(
            [*self.prefix(ns), sys.executable, str(PROBE), "tls-listen", ns, str(port), cert, key],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.listeners.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "ready", f"TLS listener in {ns}: {line!r} {process.stderr.read()}"

    def destroy(self) -> None:
        for process in self.listeners:
            process.kill()
            process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        for ns in (self.pod, self.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


@pytest.fixture(name="namespaces")
def namespaces_fixture() -> Iterator[Namespaces]:
    """A fresh pod/peer pair (registered for tests/k8s by its conftest)."""
    reason = _why_not_runnable()
    if reason is not None:
        pytest.skip(reason)
    spaces = Namespaces()
    try:
        try:
            spaces.create()
        except RuntimeError as error:
            pytest.skip(f"cannot build network namespaces here: {error}")
        yield spaces
    finally:
        spaces.destroy()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        assert spaces.pod not in left and spaces.peer not in left
