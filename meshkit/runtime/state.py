"""The state dir ($MESHKIT_HOME, default ~/.meshkit): one place for everything a mesh leaves behind.

Layout::

    $MESHKIT_HOME/
      mesh.json          what `meshkit up` started: control URL, ingress URL, workloads, pids, ports
      control/           the control plane's own state (config store, CA)
      logs/<name>.log    one log per process (apps and sidecars)
      run/               snapshots, port files and other per-run scratch files
      .lock              held while a process changes the mesh (up, deploy, scale, restart)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def default_home() -> Path:
    return Path(os.environ.get("MESHKIT_HOME") or Path.home() / ".meshkit")


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def open(cls, root: Path | str | None = None) -> StateDir:
        path = Path(root) if root is not None else default_home()
        for sub in ("", "control", "logs", "run"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def mesh_file(self) -> Path:
        return self.root / "mesh.json"

    @property
    def control_dir(self) -> Path:
        return self.root / "control"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def owner(self) -> str:
        """The tag every process of this state dir's mesh carries in its environment (processes.OWNER_ENV)."""
        return str(self.root.resolve())

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def read_mesh(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.mesh_file.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{self.mesh_file} is corrupt ({exc}); run `meshkit down --force`") from exc

    def write_mesh(self, data: dict[str, Any]) -> None:
        """Write atomically, so a crash mid-write never leaves a half file behind."""
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".mesh.", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.mesh_file)

    def clear_mesh(self) -> None:
        self.mesh_file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def changing(self, timeout: float = 120.0) -> Iterator[None]:
        """Hold the mesh's change lock (one `up`/`deploy`/`scale`/`restart` at a time, across processes).

        Raises TimeoutError naming the lock file when another change holds it longer than ``timeout``.
        The kernel releases the lock when its holder dies, so a crash never leaves the mesh locked.
        """
        path = self.root / ".lock"
        with open(path, "a+b") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"another meshkit command is changing the mesh ({path} is held "
                                           f"for more than {timeout:g} s)") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
