"""Child processes of the benchmark: start in their own session, wait until ready, always stop.

Also reads what the kernel knows about a process tree (CPU seconds and resident memory), which
is how the benchmark charges CPU per request to each proxy.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_GRACE_S = 5.0


class HarnessError(RuntimeError):
    """A benchmark process could not be started or did not become ready."""


@dataclass
class Child:
    """One started process (the leader of its own process group) and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGTERM the whole process group, wait up to STOP_GRACE_S, then SIGKILL it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=STOP_GRACE_S)
        # Workers of a master that died first would linger in the group: make sure they go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


@dataclass
class Supervisor:
    """Starts children and stops every one of them (newest first) on ``close``, even after errors."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=env, start_new_session=True,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def close(self) -> None:
        while self.children:
            self.children.pop().stop()


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for tools that cannot report a bound port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, host: str, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    """One plain HTTP/1.1 GET to 127.0.0.1:port with the given Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until(child: Child, what: str, probe: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``probe`` (exceptions count as "not yet") until true; fail early if ``child`` exits."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if not child.alive():
            raise HarnessError(
                f"{child.name} exited with code {child.popen.returncode} before {what}; "
                f"log {child.log}:\n{child.log_tail()}"
            )
        try:
            if probe():
                return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last_error = f" (last error: {exc})"
        time.sleep(0.05)
    raise HarnessError(f"{child.name}: timed out after {timeout:.0f} s waiting for {what}{last_error}; "
                       f"log {child.log}:\n{child.log_tail()}")


def wait_http_ok(child: Child, port: int, host: str, timeout: float = 20.0) -> None:
    """Wait until GET / on ``port`` with ``Host: host`` answers 200."""
    wait_until(child, f"HTTP 200 from 127.0.0.1:{port} (Host: {host})",
               lambda: http_get(port, host)[0] == 200, timeout)


def wait_listening(child: Child, port: int, timeout: float = 20.0) -> None:
    """Wait until 127.0.0.1:``port`` accepts a TCP connection (for a server HTTP cannot probe)."""
    def accepts() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(child, f"listening on 127.0.0.1:{port}", accepts, timeout)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (nginx master + workers, a sidecar and its helpers)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        tasks = Path(f"/proc/{current}/task")
        if not tasks.is_dir():
            continue
        found.append(current)
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):
                pending.extend(int(child) for child in (task / "children").read_text().split())
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of the processes (all threads), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of VmRSS of the processes, from /proc/PID/status."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total
