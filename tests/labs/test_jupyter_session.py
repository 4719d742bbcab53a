"""How `meshkit lab` ends: a stop that was asked for (SIGTERM to its process group, as a service
manager or a test does) exits 0 even when JupyterLab dies of the signal, and on_exit still runs.

JupyterLab itself is replaced by a child that sleeps: what is under test is the session's signal
handling and exit status, the same code `meshkit lab` runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meshkit.lab.jupyter import exit_status
from tests.pids import stop_group

_SESSION = textwrap.dedent("""
    import sys
    from pathlib import Path
    from meshkit.lab.jupyter import JupyterSession

    class Sleeper(JupyterSession):
        def argv(self):
            return [sys.executable, "-c", "import time; time.sleep(60)"]

    code = Sleeper(Path("."), 0).run(lambda: print("on_exit ran", flush=True))
    sys.exit(code)
""")


@pytest.mark.parametrize(("returncode", "requested", "status"), [
    (0, set(), 0), (3, {signal.SIGTERM}, 3),
    (-signal.SIGTERM, {signal.SIGTERM}, 0), (-signal.SIGHUP, {signal.SIGHUP}, 0),
    (-signal.SIGTERM, set(), 128 + signal.SIGTERM), (-signal.SIGKILL, {signal.SIGTERM}, 128 + signal.SIGKILL),
])
def test_exit_status(returncode: int, requested: set[int], status: int) -> None:
    assert exit_status(returncode, requested) == status


def _catches_sigterm(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _wait_until_forwarding(pid: int, deadline: float) -> None:
    """Until the session has started its child and handles SIGTERM (before that, a SIGTERM would
    simply kill it: that is not the case under test)."""
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/task/{pid}/children").read_text().split() and _catches_sigterm(pid):
            return
        time.sleep(0.05)
    raise AssertionError("the session never started its child")


def test_sigterm_to_the_process_group_is_a_clean_stop(tmp_path: Path) -> None:
    log = tmp_path / "session.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _SESSION], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_forwarding(proc.pid, time.monotonic() + 30)
        os.killpg(proc.pid, signal.SIGTERM)  # JupyterLab gets it twice: from the group and forwarded
        proc.wait(30)
    finally:
        stop_group(proc)
    assert proc.returncode == 0, log.read_text()
    assert "on_exit ran" in log.read_text()
