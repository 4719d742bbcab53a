"""`meshkit lab --no-browser` starts the mesh and serves JupyterLab on labs/ (token: $JUPYTER_TOKEN),
opened on the first lab, with `meshkit` on its terminals' PATH, widget state saved with a notebook, and
Bookinfo's page through jupyter-server-proxy; stopping it stops the mesh it started."""

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
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from meshkit.lab import connect
from meshkit.runtime.catalog import resolve
from meshkit.runtime.local import LocalMesh
from meshkit.runtime.ports import free_bases
from meshkit.runtime.state import StateDir
from tests.labs.conftest import LABS
from tests.pids import alive, stop_group

START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _get(url: str, *, follow: bool = True) -> tuple[int, str, str]:
    """Status, body and Location of a GET (redirects not followed when ``follow`` is false)."""
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=5) as resp:
            return resp.status, resp.read().decode(), resp.headers.get("Location", "")
    except urllib.error.HTTPError as exc:
        return exc.code, "", exc.headers.get("Location", "")


def _sign_in(url: str, user: str, token: str) -> tuple[int, str, str]:
    """POST Bookinfo's sign-in form as a browser does; status, Set-Cookie and Location (not followed)."""
    form = urllib.parse.urlencode({"username": user, "passwd": ""}).encode()
    request = urllib.request.Request(url, data=form, headers={
        "Authorization": f"token {token}", "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=15) as resp:
            return resp.status, resp.headers.get("Set-Cookie", ""), resp.headers.get("Location", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Set-Cookie", ""), exc.headers.get("Location", "")


@contextmanager
def _meshkit_lab(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """`meshkit lab --no-browser` in its own session; yields it, its URL and token once it answers."""
    port, token = _free_port(), secrets.token_hex(16)
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **env, "JUPYTER_TOKEN": token, "IPYTHONDIR": str(tmp_path / "ipython"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    bin_dir = str(Path(sys.executable).parent)  # started from elsewhere: the venv's bin is not on PATH
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)
    argv = [sys.executable, "-m", "meshkit.cli", "lab", "--no-browser", "--port", str(port)]
    with (tmp_path / "lab.log").open("w") as log:
        proc = subprocess.Popen(argv, cwd=LABS.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT
            status = 0
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status = _get(f"{base}/api/status?token={token}")[0]
                except OSError:
                    status = 0
                if status == 200:
                    break
                time.sleep(0.3)
            assert status == 200, (tmp_path / "lab.log").read_text()[-3000:]
            yield proc, base, token
        finally:
            stop_group(proc)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_meshkit_lab_serves_the_labs_over_http(lab_env: dict[str, str], tmp_path: Path) -> None:
    with _meshkit_lab(lab_env, tmp_path) as (proc, base, token):
        assert _get(f"{base}/api/contents")[0] == 403  # no token, no labs
        code, page, _ = _get(f"{base}/lab/tree/02-canary.ipynb?token={token}")
        assert code == 200 and "JupyterLab" in page
        code, body, _ = _get(f"{base}/api/contents?token={token}")
        names = {item["name"] for item in json.loads(body)["content"]}
        assert {"00-welcome.ipynb", "01-request-routing.ipynb", "02-canary.ipynb"} <= names
        # The browser lands on the first lab, not on the Launcher.
        code, _, location = _get(f"{base}/?token={token}", follow=False)
        assert code in (301, 302) and location.split("?")[0].endswith("/lab/tree/00-welcome.ipynb"), location
        # JupyterLab's terminals inherit its environment: the venv's bin (with `meshkit`) comes first.
        (jupyter,) = _children(proc.pid)
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{jupyter}/environ").read_text().split("\0") if "=" in item)
        first = environ["PATH"].split(os.pathsep)[0]
        assert first == str(Path(sys.executable).parent) and (Path(first) / "meshkit").exists()
        # Widget state is saved with the notebook: a reopened lab shows its widgets, not "model not found".
        widgets = "@jupyter-widgets/jupyterlab-manager:plugin"
        code, body, _ = _get(f"{base}/lab/api/settings/{widgets}?token={token}")
        assert code == 200, body  # JupyterLab applies overrides to the schema's defaults
        assert json.loads(body)["schema"]["properties"]["saveState"]["default"] is True, body
        # The Bookinfo page a lab cell shows comes through JupyterLab's own server (jupyter-server-proxy),
        # as on Binder, where the browser cannot reach the ingress on 127.0.0.1.
        lab_mesh = connect(start=False)
        lab_mesh.reset()  # Bookinfo's baseline, its Gateway included (an earlier test may have changed it)
        shown = lab_mesh.page()
        assert f'src="{shown.url}"' in shown._repr_html_()
        code, page, _ = _get(f"{base}{shown.url}?token={token}")
        assert code == 200 and "BookInfo Sample" in page and "Reviews served by" in page, (code, page[:300])
        # Signing in works inside the cell too: the form posts to a relative "login", so under the
        # proxy's prefix, and the proxy rewrites the answer's Location back under it.
        assert '<form method="post" action="login">' in page
        prefix = shown.url.rsplit("/", 1)[0]  # /proxy/<ingress port>
        code, cookie, location = _sign_in(f"{base}{prefix}/login", "jason", token)
        assert (code, location) == (303, f"{prefix}/productpage") and cookie.startswith("user=jason;"), \
            (code, location, cookie)
        signed = urllib.request.Request(f"{base}{prefix}/productpage",
                                        headers={"Authorization": f"token {token}", "Cookie": "user=jason"})
        with urllib.request.urlopen(signed, timeout=15) as resp:
            assert 'Signed in as <b id="user">jason</b>' in resp.read().decode()
    if proc.returncode not in (0, -signal.SIGTERM, 1):
        pytest.fail(f"meshkit lab exited with {proc.returncode}")
    assert LocalMesh(StateDir.open(lab_env["MESHKIT_HOME"])).running(), "a mesh it did not start was stopped"


def test_stopping_meshkit_lab_stops_the_mesh_it_started(tmp_path: Path) -> None:
    home = tmp_path / "home"
    base = next(free_bases(sum(s.replicas for s in resolve(["bookinfo"], {}))))
    env = {"MESHKIT_HOME": str(home), "MESHKIT_PORT_BASE": str(base)}
    mesh = LocalMesh(StateDir.open(home))
    try:
        with _meshkit_lab(env, tmp_path / "jupyter") as (proc, _, _):
            record = mesh.record()
            assert record is not None and mesh.running()
            pids = [p.pid for p in record.processes.values()]
            proc.send_signal(signal.SIGTERM)  # to `meshkit lab` alone: it stops JupyterLab, then the mesh
            proc.wait(60)
            assert proc.returncode == 0, (tmp_path / "jupyter" / "lab.log").read_text()[-2000:]
        assert mesh.record() is None and not any(alive(pid) for pid in pids)
        assert "the mesh it started is stopped too" in (tmp_path / "jupyter" / "lab.log").read_text()
    finally:
        mesh.down()
