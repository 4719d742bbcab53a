"""The browser harness of the lab tests: one JupyterLab server and one Debian chromium (driven by
Playwright) that several tests share, and the steps every notebook test takes in it (open a notebook,
wait for its kernel, Run All, wait until the last cell answered or a cell failed, shut its kernel down).

JupyterLab serves a scratch copy of the notebooks (the browser's autosave must never touch labs/), with
its own Jupyter and IPython directories and a token; the browser may only reach loopback. Every wait is
bounded.
It must not start or configure a mesh: the tests pass the environment of the one they use.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pids import stop_group

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
KERNEL_IDLE_MS = 60_000
LOOPBACK = ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (JupyterLab's kernels), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


@dataclass
class JupyterLab:
    """A running JupyterLab server on 127.0.0.1 serving ``root``."""

    proc: subprocess.Popen[bytes]
    root: Path
    port: int
    token: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, notebook: Path) -> str:
        """Copy ``notebook`` into the served folder; return its URL (token included)."""
        shutil.copy(notebook, self.root)
        # a workspace of its own: the default one would reopen the notebooks earlier tests opened
        return f"{self.base}/lab/workspaces/{notebook.stem}/tree/{notebook.name}?reset&token={self.token}"

    def _api(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"{self.base}/api/{path}?token={self.token}", method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Stop every kernel (a lab's live charts keep threads running in it)."""
        for kernel in self._api("GET", "kernels"):
            self._api("DELETE", f"kernels/{kernel['id']}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                self._api("GET", "status")
                return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"JupyterLab did not answer at {self.base} within {timeout:.0f} s "
                             f"(exit code {self.proc.poll()}; see {self.root.parent / 'jupyterlab.log'})")


@contextmanager
def jupyterlab(scratch: Path, env: dict[str, str], extra: Sequence[str] = ()) -> Iterator[JupyterLab]:
    """Start JupyterLab in ``scratch`` with ``env`` added for its kernels (and ``extra`` options);
    stop it (waiting for its exit, so the port is free again) on the way out."""
    root = scratch / "notebooks"
    root.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
            "jupyterlab.NeverCheckForUpdate", *extra]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    full_env = {**os.environ, **env, "JUPYTER_CONFIG_DIR": str(scratch / "config"),
                "JUPYTER_DATA_DIR": str(scratch / "data"), "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"),
                "IPYTHONDIR": str(scratch / "ipython")}
    # no "get notified about official Jupyter news?" toast over the notebook (and its screenshots)
    settings = scratch / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    # every cell rendered (JupyterLab 4 paints only the cells in view by default: a cell scrolled to
    # for a screenshot could still be blank)
    notebook_settings = settings.parent / "notebook-extension"
    notebook_settings.mkdir(parents=True, exist_ok=True)
    (notebook_settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    with (scratch / "jupyterlab.log").open("w") as log:
        proc = subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        lab = JupyterLab(proc, root, port, token)
        lab.wait_ready()
        yield lab
    finally:
        stop_group(proc)


@dataclass
class Browser:
    """One chromium context that only reaches loopback; ``outside`` lists every request it refused."""

    context: Any
    outside: list[str] = field(default_factory=list)

    def _loopback_only(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(LOOPBACK):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def open_notebook(self, url: str, name: str) -> Any:
        """A new page on ``url``, returned once the notebook ``name`` is the current tab and its kernel is
        connected and idle."""
        page = self.context.new_page()
        page.goto(url)
        page.wait_for_function("name => window.jupyterapp?.shell.currentWidget?.context?.path === name",
                               arg=name, timeout=KERNEL_IDLE_MS)
        # the execution indicator flashes idle before the kernel connects; the status bar text does not
        page.locator("text=/ipykernel\\) \\| Idle/").first.wait_for(timeout=KERNEL_IDLE_MS)
        return page


@contextmanager
def chromium() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (test extra; callers skip without it)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            wrapped = Browser(context)
            context.route("**/*", wrapped._loopback_only)
            yield wrapped
        finally:
            browser.close()


def outputs(page: Any) -> Any:
    """Every rendered output of the page's notebook (text locators must not match cell sources)."""
    return page.locator(".jp-OutputArea-output")


def run_all(page: Any, last_output: str, timeout_ms: int) -> float:
    """Run All; wait until an output says ``last_output`` (the notebook's last cell answered) or shows a
    traceback; return the seconds it took. A failed cell stops Run All, so the traceback ends the wait."""
    began = time.monotonic()
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    done = outputs(page).filter(has_text=last_output)
    failed = outputs(page).filter(has_text="Traceback")
    try:
        # attached, not visible: JupyterLab skips painting cells scrolled out of view
        done.or_(failed).first.wait_for(state="attached", timeout=timeout_ms)
    except Exception as exc:
        prompts = page.locator(".jp-InputPrompt").all_inner_texts()
        texts = outputs(page).all_inner_texts()
        raise AssertionError(f"Run All did not finish in {timeout_ms / 1000:.0f} s; prompts {prompts}; "
                             f"last outputs {[t[:300] for t in texts[-3:]]}") from exc
    if failed.count():
        raise AssertionError(f"a cell failed in the browser:\n{failed.first.inner_text()[:3000]}")
    return time.monotonic() - began
