"""Running the `meshkit` CLI as real subprocesses against one state dir, and finding what they left.

Every command gets ``MESHKIT_HOME`` (the test's state dir) and ``MESHKIT_PORT_BASE`` in its
environment; the processes a mesh starts inherit that environment, so `processes_of` can find
every one of them through ``/proc/PID/environ``, recorded or not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from meshkit.runtime.processes import with_environment

CLI_TIMEOUT = 90.0


def cli_env(home: Path, base: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env.update(MESHKIT_HOME=str(home), MESHKIT_PORT_BASE=str(base), NO_COLOR="1", COLUMNS="200")
    return env


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshkit.cli", *args]


def meshkit(home: Path, base: int, *args: str,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``meshkit ARGS`` to completion (bounded) and return its exit code and output."""
    return subprocess.run(cli_argv(*args), env=cli_env(home, base), capture_output=True, text=True,
                          timeout=timeout, check=False)


def processes_of(home: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose environment says ``MESHKIT_HOME=<home>``."""
    return [rec.pid for rec in with_environment(f"MESHKIT_HOME={home}")]
