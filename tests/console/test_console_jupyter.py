"""The console's address through Jupyter: the Jupyter server a process runs under (JupyterHub's
prefix, else the info file of the server above it) and ``mesh.console()``'s iframe and link."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.control.client import ControlClient
from meshkit.control.console.proxied import JupyterServer, console_path, jupyter_server
from meshkit.lab.display import LabError
from meshkit.lab.mesh import Mesh


def test_jupyterhub_prefix_wins() -> None:
    assert jupyter_server({"JUPYTERHUB_SERVICE_PREFIX": "/user/ada"}) == JupyterServer("/user/ada/")
    assert console_path("http://127.0.0.1:21010", "/user/ada/") == "/user/ada/proxy/21010/ui/"
    assert console_path("http://127.0.0.1:21010") == "/proxy/21010/ui/"
    with pytest.raises(ValueError, match="names no port"):
        console_path("http://127.0.0.1")


def test_a_child_process_finds_the_jupyter_server_above_it(tmp_path: Path) -> None:
    """A kernel or a terminal is a descendant of the Jupyter server: here this test plays the server
    (its info file names this process) and a child python process looks for it."""
    assert jupyter_server({"JUPYTER_RUNTIME_DIR": str(tmp_path)}) is None  # no info file: not in Jupyter
    (tmp_path / f"jpserver-{os.getpid()}.json").write_text(json.dumps(
        {"base_url": "/lab-base", "url": "http://127.0.0.1:8899/lab-base/", "pid": os.getpid()}))
    env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_SERVICE_PREFIX"}
    code = ("from meshkit.control.console.proxied import jupyter_server; s = jupyter_server(); "
            "print(s.base_url, s.url)")
    # through a shell, as in a Jupyter terminal: the server is the grandparent
    out = subprocess.run(["/bin/sh", "-c", f'"{sys.executable}" -c "{code}"; true'], capture_output=True,
                         text=True, timeout=60, env={**env, "JUPYTER_RUNTIME_DIR": str(tmp_path)}, check=True)
    assert out.stdout.split() == ["/lab-base/", "http://127.0.0.1:8899/lab-base/"], out


def test_mesh_console_is_an_iframe_through_jupyter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    mesh = Mesh("http://127.0.0.1:21010", client=ControlClient("http://127.0.0.1:21010", token="s3cret"))
    page = mesh.console()
    assert page.url == "/user/ada/proxy/21010/ui/#token=s3cret"
    assert '<iframe src="/user/ada/proxy/21010/ui/#token=s3cret"' in page._repr_html_()
    assert "s3cret" not in str(page) and "s3cret" not in repr(page)  # the text output keeps no token
    remote = Mesh("http://10.1.2.3:15010", client=ControlClient("http://10.1.2.3:15010", token="t"))
    with pytest.raises(LabError, match="not on this machine"):
        remote.console()
