"""Where the web console is, seen from a browser that reaches this machine only through Jupyter.

On Binder and JupyterHub (and in `meshkit lab`) the learner's browser talks to the Jupyter server
only; jupyter-server-proxy forwards ``<base_url>proxy/<port>/...`` to ``127.0.0.1:<port>/...``. The
console's page uses relative URLs only, so ``<base_url>proxy/<control port>/ui/`` serves it whole.

The Jupyter server's base URL is, in order: ``$JUPYTERHUB_SERVICE_PREFIX`` (JupyterHub and Binder
set it for the single-user server, its kernels and terminals), else the ``base_url`` in the server
info file (``jpserver-<pid>.json`` in Jupyter's runtime directory) of the Jupyter server this process
runs under (a kernel's or a terminal's ancestor), else none: not inside Jupyter.

It must stay stdlib-only and must not print, open a browser or talk to the control plane.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

HUB_PREFIX_ENV = "JUPYTERHUB_SERVICE_PREFIX"  # set by JupyterHub (and Binder): /user/<name>/
MAX_ANCESTORS = 16


@dataclass(frozen=True, slots=True)
class JupyterServer:
    """The Jupyter server a browser reaches: its base URL path (``/`` or ``/user/<name>/``) and, when
    known from its info file, its full URL (``http://127.0.0.1:8888/``)."""

    base_url: str
    url: str | None = None


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def runtime_dir(env: Mapping[str, str]) -> Path:
    """Jupyter's runtime directory, as jupyter_core finds it (without importing it)."""
    if env.get("JUPYTER_RUNTIME_DIR"):
        return Path(env["JUPYTER_RUNTIME_DIR"])
    data = env.get("JUPYTER_DATA_DIR") or str(Path(env.get("XDG_DATA_HOME") or Path.home() / ".local/share")
                                               / "jupyter")
    return Path(data) / "runtime"


def jupyter_server(env: Mapping[str, str] | None = None, pid: int | None = None) -> JupyterServer | None:
    """The Jupyter server this process runs under (see the module's docstring), or None."""
    env = os.environ if env is None else env
    prefix = env.get(HUB_PREFIX_ENV)
    if prefix:
        return JupyterServer("/" + prefix.strip("/") + "/" if prefix.strip("/") else "/")
    folder = runtime_dir(env)
    current: int | None = os.getpid() if pid is None else pid
    for _ in range(MAX_ANCESTORS):
        if current is None or current <= 1:
            break
        info = folder / f"jpserver-{current}.json"
        try:
            doc = json.loads(info.read_text())
        except (OSError, ValueError):
            current = _parent(current)
            continue
        base = str(doc.get("base_url") or "/")
        url = doc.get("url")
        return JupyterServer(base if base.endswith("/") else base + "/", str(url) if url else None)
    return None


def console_path(control_url: str, base_url: str = "/") -> str:
    """The console's path through jupyter-server-proxy: ``<base_url>proxy/<port>/ui/``."""
    port = urlsplit(control_url).port
    if port is None:
        raise ValueError(f"the control plane URL {control_url} names no port")
    return f"{base_url.rstrip('/')}/proxy/{port}/ui/"
