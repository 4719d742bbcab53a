"""Processes as the tests see them: liveness (a zombie counts as dead) and stopping a process group."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def stop_group(proc: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session=True``), then
    SIGKILL it if it has not exited after ``grace`` seconds; always reaps ``proc``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
