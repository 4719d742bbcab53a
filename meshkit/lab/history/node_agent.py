"""The "node agent" shape of lab 09: ONE shared meshkit proxy for every workload on the node.

`node_snapshot(sidecar_dump, app_ports)` turns one sidecar's snapshot (from its admin
``/config_dump``: the same virtual hosts, routes, retries and subsets the control plane compiled
from the Istio config) into a node proxy's: every endpoint points at the destination app's own
port instead of its sidecar, the proxy has no workload identity of its own and speaks plaintext
(it is the only proxy on the path; between nodes it would talk to the other node's agent).

`NodeProxy` runs it as a real ``python -m meshkit.proxy --config FILE`` process on free ports.
It is a context manager, registers an ``atexit`` stop and asks the kernel to SIGTERM it when the
process that started it dies, so the extra process never outlives the notebook; its temporary
directory (snapshot, ports file, logs) is removed as soon as it is ready. Its admin
counters (``stats()``, ``clusters()``) are what lab 09's check reads: the proxy's own numbers.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from meshkit.config.compile import snapshot_version
from meshkit.lab.display import LabError
from meshkit.runtime.processes import dying_with_parent, python_argv, rss_bytes

__all__ = [
    "NAMESPACE",
    "NODE_NAME",
    "START_TIMEOUT",
    "STOP_GRACE",
    "NodeProxy",
    "fetch_json",
    "fetch_text",
    "node_snapshot",
]

NODE_NAME = "node-agent-0"
NAMESPACE = "default"
START_TIMEOUT = 20.0
STOP_GRACE = 3.0


def fetch_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON admin page; LabError naming the URL when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise LabError(f"{url} did not answer with JSON ({exc})") from None


def fetch_text(url: str, timeout: float = 5.0) -> str:
    """GET a text admin page (``/stats/prometheus``); LabError naming the URL when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode("utf-8", errors="replace"))
    except OSError as exc:
        raise LabError(f"{url} did not answer ({exc})") from None


def node_snapshot(sidecar_dump: dict[str, Any], app_ports: dict[str, int]) -> dict[str, Any]:
    """A node proxy's snapshot from a sidecar's: endpoints on the apps' ports, no identity, no TLS.

    ``sidecar_dump`` is a sidecar's ``/config_dump`` page (or its ``snapshot``); ``app_ports`` maps
    an instance name (``details-v1-0``) to its app's port.
    """
    source = sidecar_dump.get("snapshot", sidecar_dump)
    if not isinstance(source, dict) or not isinstance(source.get("clusters"), dict):
        raise LabError("node_snapshot: the sidecar's config_dump has no snapshot.clusters "
                       "(has the sidecar received its config yet?)")
    snap = copy.deepcopy(source)
    for key, cluster in snap["clusters"].items():
        for index, endpoint in enumerate(cluster.get("endpoints") or []):
            instance = endpoint.get("instance")
            if instance not in app_ports:
                raise LabError(f"node_snapshot: clusters.{key}.endpoints[{index}]: instance {instance!r} "
                               "has no app port in the mesh status")
            endpoint["port"] = app_ports[instance]
            endpoint["has_sidecar"] = False
        cluster["tls"] = {"mode": "DISABLE", "server_identities": []}
    snap["node"] = {"id": f"{NODE_NAME}.{NAMESPACE}", "workload": "node-agent", "instance": NODE_NAME,
                    "namespace": NAMESPACE, "service": None, "version": None,
                    "labels": {"app": "node-agent"}, "identity": None, "kind": "sidecar"}
    snap["inbound"] = None
    snap["trust"] = None
    snap.pop("revision", None)
    snap["version"] = snapshot_version(snap)
    return snap


class NodeProxy:
    """One shared meshkit proxy process started from a static snapshot; stop() (or leaving the
    ``with`` block, or the interpreter exiting) ends it."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        self.snapshot_at = time.time()  # the config it serves is the control plane's of this moment
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.last_rss = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = START_TIMEOUT) -> NodeProxy:
        if self.alive():
            return self
        self.workdir = Path(tempfile.mkdtemp(prefix="meshkit-node-agent-"))
        config = self.workdir / "snapshot.json"
        config.write_text(json.dumps(self.snapshot), encoding="utf-8")
        ports_file = self.workdir / "ports.json"
        argv = dying_with_parent(python_argv(
            "meshkit.proxy", "--config", str(config), "--outbound-port", "0", "--inbound-port", "0",
            "--admin-port", "0", "--ports-file", str(ports_file), "--drain-seconds", "0.2",
            "--access-log", str(self.workdir / "access.log")))  # as the mesh's sidecars log
        with open(self.workdir / "proxy.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if ports_file.exists() and self._ready(ports_file):
                self.last_rss = rss_bytes(self.process.pid)
                # The proxy has read its snapshot and holds its log files open: the directory can go
                # now, so nothing is left in /tmp even if this process is killed without clean-up.
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
                return self
            time.sleep(0.05)
        reason = self._log_tail()
        self.stop()
        raise LabError(f"the node proxy did not become ready within {timeout:.0f} s: {reason}")

    def _ready(self, ports_file: Path) -> bool:
        try:
            self.ports = {k: int(v) for k, v in json.loads(ports_file.read_text()).items() if k != "pid"}
            url = f"http://127.0.0.1:{self.ports['admin']}/ready"
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (OSError, ValueError, KeyError):
            return False

    def _log_tail(self) -> str:
        if self.workdir is None:
            return "it was never started"
        try:
            lines = (self.workdir / "proxy.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        code = self.process.poll() if self.process is not None else None
        exited = f"it exited with status {code}" if code is not None else "it is still starting"
        return exited + (": " + " | ".join(lines[-3:]) if lines else "")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def admin(self, page: str) -> Any:
        if not self.alive():
            raise LabError(f"the node proxy is not running, so its admin page {page} cannot be read")
        return fetch_json(f"http://127.0.0.1:{self.ports['admin']}{page}")

    def stats(self) -> dict[str, Any]:
        """The proxy's own JSON counters (``/stats``): listeners, upstream, config."""
        return dict(self.admin("/stats"))

    def clusters(self) -> dict[str, Any]:
        return dict(self.admin("/clusters"))

    def rss(self) -> int:
        """Resident memory in bytes now (the last value seen once it has stopped)."""
        if self.alive() and self.pid is not None:
            self.last_rss = rss_bytes(self.pid) or self.last_rss
        return self.last_rss

    def stop(self) -> None:
        """SIGTERM, wait up to STOP_GRACE seconds, then SIGKILL; remove the temp dir. Idempotent."""
        atexit.unregister(self.stop)
        proc = self.process
        if proc is not None and proc.poll() is None:
            self.rss()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_GRACE)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> NodeProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}, ports {self.ports}" if self.alive() else "stopped"
        return f"NodeProxy({state})"
