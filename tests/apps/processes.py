"""Starting demo apps as real processes for the tests, and never leaking one.

``AppProcesses.launch`` runs ``python -m meshkit.apps <app> --port 0 ...`` and waits (bounded)
for the JSON ready line that names the port the kernel picked.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunningApp:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, path: str) -> dict[str, object]:
        """POST an /admin/ knob, e.g. ``admin("fail?rate=0.5")``; returns the state JSON."""
        request = urllib.request.Request(f"{self.url}/admin/{path}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())


class AppProcesses:
    def __init__(self) -> None:
        self._running: list[RunningApp] = []
        self._logs = tempfile.TemporaryDirectory(prefix="meshkit-apps-test-")

    def spawn(
        self, app: str, *args: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``python -m meshkit.apps app *args`` (no proxy variables unless ``env`` has them)."""
        full_env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "no_proxy")}
        full_env.update(env or {})
        log = Path(self._logs.name) / f"{app}-{len(self._running)}-{time.monotonic_ns()}.err"
        with open(log, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "meshkit.apps", app, *args],
                cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=err,
            )
        return process, log

    def launch(self, app: str, *args: str, env: dict[str, str] | None = None) -> RunningApp:
        """Start one app on a free port and wait for its ready line."""
        (running,) = self.launch_many([(app, args, env)])
        return running

    def launch_many(
        self, specs: list[tuple[str, tuple[str, ...], dict[str, str] | None]]
    ) -> list[RunningApp]:
        """Start several apps at once (their start-ups overlap), then wait for every ready line."""
        started = [(app, *self.spawn(app, "--port", "0", *args, env=env)) for app, args, env in specs]
        launched: list[RunningApp] = []
        try:
            for app, process, log in started:
                try:
                    ready = _ready_line(process)
                except RuntimeError as exc:
                    raise RuntimeError(f"{exc}; stderr: {log.read_text()[-2000:]}") from None
                launched.append(RunningApp(app, int(ready["port"]), process))
        except RuntimeError:
            for _, process, _ in started:
                _stop(process)
            raise
        self._running.extend(launched)
        return launched

    def stop_all(self) -> None:
        for running in self._running:  # signal all first: their shutdowns overlap
            if running.process.poll() is None:
                running.process.terminate()
        for running in self._running:
            _stop(running.process)
        self._running.clear()
        self._logs.cleanup()


def _ready_line(process: subprocess.Popen[bytes]) -> dict[str, object]:
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                line = process.stdout.readline()
                if not line:
                    break
                return json.loads(line)
            if process.poll() is not None:
                break
    raise RuntimeError(f"{process.args}: no ready line (exit code {process.poll()})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
    if process.stdout is not None:
        process.stdout.close()
