"""``kubectl port-forward`` to the control plane, as a managed subprocess.

The other way (besides the API server's service proxy, `meshkit.k8s.cluster_config`) to reach
the control plane of a cluster: ``kubectl --context CTX -n meshkit-system port-forward
svc/meshkit-control :15010 --address 127.0.0.1``. kubectl picks a free local port and prints
``Forwarding from 127.0.0.1:PORT -> 15010``; `PortForward.start` reads that line (bounded wait;
if kubectl exits first, its stderr is the error), and `stop` ends the process (SIGTERM, then
SIGKILL), also at interpreter exit. Useful where the service proxy is not allowed (RBAC without
``services/proxy``) or for long-lived reads; it needs kubectl and ``pods/portforward``.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO

from meshkit.k8s import names

FORWARDING = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


class PortForwardError(RuntimeError):
    """kubectl port-forward did not start; the message has kubectl's own words."""


def port_forward_argv(context: str | None, *, kubectl: str = "kubectl",
                      namespace: str = names.SYSTEM_NAMESPACE, service: str = names.CONTROL_SERVICE,
                      port: int = names.PORT_CONTROL) -> list[str]:
    """The kubectl command line (``context`` None: kubectl's current context)."""
    argv = [kubectl]
    if context:
        argv += ["--context", context]
    return [*argv, "-n", namespace, "port-forward", f"svc/{service}", f":{port}", "--address", "127.0.0.1"]


class PortForward:
    """One running ``kubectl port-forward``; ``url`` is where the control plane answers locally."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.process: subprocess.Popen[str] | None = None
        self.local_port: int | None = None
        self._stderr: list[str] = []

    @property
    def url(self) -> str:
        if self.local_port is None:
            raise PortForwardError("the port-forward is not running (call start())")
        return f"http://127.0.0.1:{self.local_port}"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> PortForward:
        """Start kubectl and wait (at most ``timeout_s``) for its "Forwarding from" line."""
        if shutil.which(self.argv[0]) is None:
            raise PortForwardError(f"`{self.argv[0]}` is not installed: install kubectl "
                                   "(https://kubernetes.io/docs/tasks/tools/) or use the service proxy")
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        atexit.register(self.stop)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(self.process.stdout, lines), daemon=True).start()
        threading.Thread(target=_collect, args=(self.process.stderr, self._stderr), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: kubectl exited
                break
            match = FORWARDING.match(line)
            if match:
                self.local_port = int(match.group(1))
                threading.Thread(target=_drain, args=(lines,), daemon=True).start()
                return self
        self.stop()
        said = " ".join(line.strip() for line in self._stderr if line.strip())[-500:]
        if said:
            raise PortForwardError(f"{' '.join(self.argv)} failed: {said}")
        raise PortForwardError(f"{' '.join(self.argv)} printed no 'Forwarding from' line within "
                               f"{timeout_s:g} s")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """End kubectl (SIGTERM, SIGKILL after 5 s); idempotent."""
        process, self.process = self.process, None
        self.local_port = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> PortForward:
        return self.start() if self.process is None else self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _pump(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in stream or ():
            lines.put(line)
    lines.put(None)


def _collect(stream: IO[str] | None, into: list[str]) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in stream or ():
            into.append(line)
            del into[:-50]  # keep the last lines only


def _drain(lines: queue.Queue[str | None]) -> None:
    """Keep reading kubectl's stdout ("Handling connection for ...") so its pipe never fills."""
    while lines.get() is not None:
        pass
