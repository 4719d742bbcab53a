"""The web console in a notebook cell: ``mesh.console()`` shows it in an iframe through Jupyter.

The learner's browser may reach only the Jupyter server (Binder, JupyterHub, a remote `meshkit
lab`), so the iframe loads ``<Jupyter base URL>proxy/<control port>/ui/`` (jupyter-server-proxy),
with the admin token in the fragment as `meshkit dashboard` gives it (docs/console.md). The base URL
comes from `meshkit.control.console.proxied.jupyter_server` (``$JUPYTERHUB_SERVICE_PREFIX``, else the
info file of the Jupyter server running this kernel, else ``/``).

The token is only in the HTML output (the iframe's and the link's fragment), never in the text one:
a saved notebook keeps that output, so clear it before sharing the notebook.
It must not talk to the control plane or start anything: it only builds the link.
"""

from __future__ import annotations

import html
from urllib.parse import urlsplit

from meshkit.control.console.proxied import console_path, jupyter_server
from meshkit.lab.display import LabError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ConsolePage:
    """The console of the control plane at ``control_url``, as a cell shows it (an iframe and a link)."""

    def __init__(self, control_url: str, token: str | None, *, height: int = 760) -> None:
        host = urlsplit(control_url).hostname
        if host not in LOOPBACK:
            raise LabError(f"console: the control plane at {control_url} is not on this machine, so "
                           "Jupyter cannot forward to it; run `meshkit dashboard` where it runs (or "
                           "kubectl port-forward it to 127.0.0.1)")
        server = jupyter_server()
        try:
            self.path = console_path(control_url, server.base_url if server is not None else "/")
        except ValueError as exc:
            raise LabError(f"console: {exc}") from None
        self.token = token
        self.height = height

    @property
    def url(self) -> str:
        """The page's path on the Jupyter server, the token in its fragment (when there is one)."""
        return f"{self.path}#token={self.token}" if self.token else self.path

    def __str__(self) -> str:
        return f"the meshkit console, through Jupyter at {self.path} (open it from the cell's HTML output)"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        url = html.escape(self.url, quote=True)
        return (f'<iframe src="{url}" title="meshkit console" style="width:100%;height:{self.height}px;'
                'border:1px solid #ccc"></iframe>'
                '<div style="font-size:90%">The meshkit console, through Jupyter (jupyter-server-proxy). '
                f'<a href="{url}" target="_blank" rel="noopener">Open it in a tab</a>. This output holds '
                'the admin token: clear it before you share the notebook.</div>')
