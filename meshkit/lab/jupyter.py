"""JupyterLab beside the local mesh, as `meshkit lab` runs it.

What it decides: the command line (the labs folder as root, the first lab as the page the browser
opens instead of the Launcher), the environment (this Python's ``bin`` first on ``PATH``, so the
terminal a lab hint sends a learner to runs ``meshkit``), and the end of the session (a mesh that this
session started is stopped when JupyterLab exits; one that was already running is left running, and
the learner is told how to stop it), and JupyterLab's settings: widget state is saved in the notebook
when it is saved (``saveState``), so a lab reopened later shows its widgets as they were instead of
"Error displaying widget: model not found" (`write_overrides`; `binder/postBuild` writes the same).

It must not parse command-line options or print (the CLI does both), and must not start the mesh
itself: the caller passes whether it did.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = ["LAB_SETTINGS", "START_PAGE", "JupyterSession", "exit_status", "lab_environment", "settings_dir",
           "start_page", "write_overrides"]

START_PAGE = "00-welcome.ipynb"
# JupyterLab settings the labs need, as an overrides.d file (defaults the learner can still change)
LAB_SETTINGS: dict[str, dict[str, object]] = {
    "@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True},
}
STOP_GRACE_S = 20.0


def exit_status(returncode: int, requested: set[int]) -> int:
    """What `meshkit lab` exits with, given JupyterLab's ``returncode`` (negative: killed by that
    signal) and the signals a user asked it to stop with: a stop that was asked for is a clean exit
    (JupyterLab may die of the second SIGTERM a process-group kill delivers), any other signal death
    is reported as a shell does (128 + N), never as a negative code the OS would wrap to 241."""
    if returncode >= 0:
        return returncode
    if -returncode in requested:
        return 0
    return 128 - returncode


def start_page(folder: Path) -> str | None:
    """The notebook the browser opens first: the welcome lab, else the first lab, else none."""
    if (folder / START_PAGE).is_file():
        return START_PAGE
    labs = sorted(p.name for p in folder.glob("*.ipynb"))
    return labs[0] if labs else None


def lab_environment(base: Mapping[str, str], python: str = sys.executable) -> dict[str, str]:
    """``base`` with the directory of ``python`` (the virtual environment's ``bin``) first on PATH."""
    scripts = str(Path(python).parent)
    rest = [entry for entry in base.get("PATH", os.defpath).split(os.pathsep) if entry and entry != scripts]
    return {**base, "PATH": os.pathsep.join([scripts, *rest])}


def write_overrides(app_settings_dir: Path) -> Path:
    """Write `LAB_SETTINGS` as ``overrides.d/meshkit.json`` under JupyterLab's application settings
    directory (other packages' overrides and the user's own ``overrides.json`` stay as they are)."""
    target = app_settings_dir / "overrides.d" / "meshkit.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(LAB_SETTINGS, indent=2) + "\n", encoding="utf-8")
    return target


def settings_dir(state_root: Path, python: str = sys.executable) -> Path:
    """An application settings directory for `meshkit lab` under ``state_root``: a copy of the
    environment's own (``<prefix>/share/jupyter/lab/settings``: page config, other overrides) plus
    `LAB_SETTINGS`. Written on every start, so it follows the installed environment."""
    target = state_root / "jupyterlab-settings"
    default = Path(python).parent.parent / "share" / "jupyter" / "lab" / "settings"
    if target.exists():
        shutil.rmtree(target)
    if default.is_dir():
        shutil.copytree(default, target)
    write_overrides(target)
    return target


@dataclass
class JupyterSession:
    """One JupyterLab server on ``folder``; ``run`` blocks until it exits, then calls ``on_exit``."""

    folder: Path
    port: int
    open_browser: bool = True
    python: str = sys.executable
    settings: Path | None = None  # the application settings directory (`settings_dir`)

    def argv(self) -> list[str]:
        argv = [self.python, "-m", "jupyterlab", f"--ServerApp.root_dir={self.folder.resolve()}",
                f"--ServerApp.port={self.port}", "--ServerApp.ip=127.0.0.1"]
        if self.settings is not None:
            argv.append(f"--LabApp.app_settings_dir={self.settings}")
        page = start_page(self.folder)
        if page is not None:
            argv.append(f"--LabApp.default_url=/lab/tree/{page}")
        if not self.open_browser:
            argv.append("--no-browser")
        if os.geteuid() == 0:
            argv.append("--allow-root")
        return argv

    def run(self, on_exit: Callable[[], None]) -> int:
        """Serve until JupyterLab exits (Ctrl-C goes to JupyterLab, which asks to confirm; SIGTERM and
        SIGHUP are passed on to it); then ``on_exit()``, always. Returns the exit status for the
        command (``exit_status``: a stop that was asked for is 0)."""
        child = subprocess.Popen(self.argv(), env=lab_environment(os.environ, self.python))
        requested: set[int] = set()
        try:
            with _forwarding(child, requested):
                return exit_status(child.wait(), requested)
        finally:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            on_exit()


@contextlib.contextmanager
def _forwarding(child: subprocess.Popen[bytes], requested: set[int]) -> Iterator[None]:
    """While JupyterLab runs: Ctrl-C is its business (the terminal sends it to both of us), SIGTERM
    and SIGHUP are handed to it (and noted in ``requested``); the handlers in place before are put
    back afterwards."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        requested.add(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
