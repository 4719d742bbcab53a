"""`meshkit lab --no-browser` starts the mesh and serves JupyterLab on labs/ (token: $JUPYTER_TOKEN),
opening lab 00 rather than the Launcher, with this environment's bin on the PATH its terminals get."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.labs.conftest import LABS
from tests.pids import stop_group

START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_meshkit_lab_serves_the_labs_over_http(lab_env: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    token = secrets.token_hex(16)
    env = {**os.environ, **lab_env, "JUPYTER_TOKEN": token, "IPYTHONDIR": str(tmp_path / "ipython"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    bin_dir = str(Path(sys.executable).parent)  # started from elsewhere: the venv's bin is not on PATH
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)
    argv = [sys.executable, "-m", "meshkit.cli", "lab", "--no-browser", "--port", str(port)]
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(argv, cwd=LABS.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        status = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = _get(f"{base}/api/status?token={token}")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.3)
        assert status == 200, (tmp_path / "lab.log").read_text()[-3000:]
        assert _get(f"{base}/api/contents")[0] == 403  # no token, no labs
        with urllib.request.urlopen(f"{base}/?token={token}", timeout=5) as first:  # follows the redirect
            assert first.url.split("?")[0].endswith("/lab/tree/00-welcome.ipynb"), first.url
        served_env = dict(item.split("=", 1) for item in
                          Path(f"/proc/{proc.pid}/environ").read_text().split("\0") if "=" in item)
        assert bin_dir in served_env["PATH"].split(os.pathsep)  # JupyterLab's terminals find meshkit
        assert "`meshkit down` stops it" in (tmp_path / "lab.log").read_text()  # says how to stop the mesh
        code, page = _get(f"{base}/lab/tree/02-canary.ipynb?token={token}")
        assert code == 200 and "JupyterLab" in page
        code, body = _get(f"{base}/api/contents?token={token}")
        names = {item["name"] for item in json.loads(body)["content"]}
        assert {"00-welcome.ipynb", "01-request-routing.ipynb", "02-canary.ipynb"} <= names
    finally:
        stop_group(proc)
        log.close()
    if proc.returncode not in (0, -signal.SIGTERM, 1):
        pytest.fail(f"meshkit lab exited with {proc.returncode}")
