"""Starting and stopping the mesh's processes so that none is ever orphaned.

Each process is started in its own session (so it outlives the CLI that started it and
can be signalled as a group) and remembered as a `ProcessRecord`: its pid plus the
kernel's start time for that pid, so a stale record can never make us signal a process
that merely reused the pid after a crash or a reboot.

A process may also carry an *owner* tag in its environment (``MESHKIT_MESH=<state dir>``):
`owned_by` finds every live process with that tag, so a process started just before the CLI
that started it was killed (and never recorded) is still found and stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OWNER_ENV = "MESHKIT_MESH"


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces or parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int | None
    argv: tuple[str, ...]
    log: str

    def alive(self) -> bool:
        ticks = _start_ticks(self.pid)
        if ticks is None or (self.start_ticks is not None and ticks != self.start_ticks):
            return False
        # A zombie still has /proc/PID; it is not alive for our purposes.
        with contextlib.suppress(FileNotFoundError):
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            if stat[stat.rfind(")") + 2] == "Z":
                return False
        return True

    def started_at(self) -> float | None:
        """Wall-clock start time (from the kernel's start ticks and boot time), None if unknown."""
        if self.start_ticks is None:
            return None
        try:
            boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                        if line.startswith("btime "))
        except (OSError, StopIteration, ValueError):
            return None
        return boot + self.start_ticks / os.sysconf("SC_CLK_TCK")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(data["name"], data["pid"], data.get("start_ticks"), tuple(data["argv"]), data["log"])


def spawn(
    name: str, argv: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
    owner: str | None = None,
) -> ProcessRecord:
    """Start ``argv`` detached in its own session, stdout and stderr appended to ``log``.

    ``owner`` (e.g. the state dir) is put in the child's environment as ``MESHKIT_MESH``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        env = {**(env if env is not None else os.environ), OWNER_ENV: owner}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    return ProcessRecord(name, proc.pid, _start_ticks(proc.pid), tuple(argv), str(log))


def owned_by(owner: str) -> list[ProcessRecord]:
    """Every live process of this user whose environment has ``MESHKIT_MESH=<owner>``."""
    return with_environment(f"{OWNER_ENV}={owner}")


def with_environment(variable: str) -> list[ProcessRecord]:
    """Every live process of this user whose environment holds ``variable`` (``NAME=value``)."""
    marker = variable.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        argv = tuple(a.decode(errors="replace") for a in cmdline if a)
        rec = ProcessRecord(f"pid {entry.name}", int(entry.name), _start_ticks(int(entry.name)), argv, "")
        if rec.alive():
            found.append(rec)
    return found


def python_argv(module: str, *args: str) -> list[str]:
    """Run a meshkit module with the same interpreter (so the venv is always the same)."""
    return [sys.executable, "-m", module, *args]


PR_SET_PDEATHSIG = 1

# Runs first in the child: ask Linux for a SIGTERM when the starting thread dies (the setting survives
# exec), give up if that already happened, then become argv[2:].
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform == 'linux':\n"
    f"    ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, int(signal.SIGTERM), 0, 0, 0)\n"
    "    if os.getppid() != int(sys.argv[1]):\n"
    "        sys.exit('the process that started it is gone')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` (an executable's path first) started so that it gets SIGTERM when the thread that
    starts it dies, even by SIGKILL: for helpers a notebook starts (a node proxy, Prometheus),
    which must not outlive their kernel. Unlike the mesh's processes, these are not recorded."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


def stop(records: list[ProcessRecord], *, grace: float = 3.0) -> list[str]:
    """SIGTERM every live process group, wait up to ``grace`` seconds, then SIGKILL.

    Returns the names of the processes that had to be killed.
    """
    live = [r for r in records if r.alive()]
    for rec in live:
        _signal_group(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(r.alive() for r in live):
        _reap()
        time.sleep(0.05)
    killed = []
    for rec in live:
        if rec.alive():
            _signal_group(rec.pid, signal.SIGKILL)
            killed.append(rec.name)
    deadline = time.monotonic() + 2.0
    while killed and time.monotonic() < deadline and any(r.alive() for r in live):
        _reap()
        time.sleep(0.02)
    _reap()
    return killed


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the process leads its own session/group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap() -> None:
    """Collect exit statuses of our own children (when the CLI that spawned them still runs)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
