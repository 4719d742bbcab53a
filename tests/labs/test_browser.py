"""Lab 02 in a real JupyterLab, driven by Debian's chromium through Playwright: Run All renders the canary
slider and the live plotly chart for a person, and every check passes. Also measures the memory of
mesh + JupyterLab + kernel (Binder gives 2 GB).

Set-up: Debian ``chromium`` (``./dev test`` installs it as root) and the pip package ``playwright``
(test extra); Playwright's own browser download is never used. Only loopback requests are allowed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from meshkit.runtime.local import LocalMesh
from meshkit.runtime.processes import rss_bytes
from meshkit.runtime.state import StateDir
from tests.labs.conftest import LABS

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_MS = 150_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: install Debian's chromium (./dev test does, as root)"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
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


def _start_jupyterlab(root: Path, port: int, token: str, tmp: Path,
                      env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
            "jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    full_env = {**os.environ, **env, "JUPYTER_CONFIG_DIR": str(tmp / "config"),
                "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "IPYTHONDIR": str(tmp / "ipython")}
    log = (tmp / "jupyterlab.log").open("w")
    return subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"JupyterLab did not answer at {url}")


def test_lab_02_renders_slider_and_live_chart_in_jupyterlab(lab_env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "labs"
    root.mkdir()
    shutil.copy(LABS / "02-canary.ipynb", root)  # the browser's autosave must never touch labs/
    port, token = _free_port(), secrets.token_hex(16)
    proc = _start_jupyterlab(root, port, token, tmp_path, {**lab_env, "MESHKIT_LAB_STRICT": "1"})
    base = f"http://127.0.0.1:{port}"
    outside: list[str] = []
    try:
        _wait_ready(f"{base}/api/status?token={token}", proc)
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            def loopback_only(route: object) -> None:
                url = route.request.url  # type: ignore[attr-defined]
                if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
                    route.continue_()  # type: ignore[attr-defined]
                else:
                    outside.append(url)
                    route.abort()  # type: ignore[attr-defined]

            page.route("**/*", loopback_only)
            began = time.monotonic()
            page.goto(f"{base}/lab/tree/02-canary.ipynb?token={token}")
            page.locator("text=/ipykernel\\) \\| Idle/").first.wait_for(timeout=60_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            outputs = page.locator(".jp-OutputArea-output")
            outputs.locator(".widget-slider, .widget-hslider").first.wait_for(timeout=RUN_TIMEOUT_MS)
            outputs.locator(".js-plotly-plot").first.wait_for(timeout=RUN_TIMEOUT_MS)
            outputs.filter(has_text="v3 takes all the traffic: passed").first.wait_for(timeout=RUN_TIMEOUT_MS)
            ran = time.monotonic() - began
            traces = page.evaluate("document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length")
            slider_value = outputs.locator(".widget-readout").first.inner_text()
            assert not outputs.filter(has_text="Traceback").count()
            assert not outputs.filter(has_text="not yet").count()
            mesh_bytes = sum(LocalMesh(StateDir.open(lab_env["MESHKIT_HOME"])).memory().values())
            jupyter_bytes = sum(rss_bytes(pid) for pid in _descendants(proc.pid))
            outputs.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "lab-02.png"), full_page=False)
            browser.close()
        assert traces >= 3, f"the live chart drew {traces} traces"
        assert slider_value.strip() == "50", f"the slider shows {slider_value!r}"
        assert not outside, f"requests left the machine: {outside[:5]}"
        total_mb = (mesh_bytes + jupyter_bytes) / 1e6
        print(f"\nlab 02 in JupyterLab: run all + checks in {ran:.1f} s; "
              f"RSS mesh {mesh_bytes / 1e6:.0f} MB + JupyterLab and kernel {jupyter_bytes / 1e6:.0f} MB "
              f"= {total_mb:.0f} MB")
        assert total_mb < 2000, "mesh + JupyterLab + kernel must fit Binder's 2 GB"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
