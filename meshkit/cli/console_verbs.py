"""``meshkit dashboard``: print (and open) the web console's URL, the admin token in its fragment.

The fragment (``#token=...``) never reaches a server; the page moves it to sessionStorage and sends
it as ``Authorization: Bearer`` (docs/console.md). Thin like every verb: find the control plane,
check it answers with the token, print.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import typer

from meshkit.cli.common import EXIT_UNAVAILABLE, ControlOption, app


@app.command()
def dashboard(
    control: ControlOption = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL only.")] = False,
) -> None:
    """The web console (service graph, workloads, Istio config, explain): prints its URL and opens it."""
    from meshkit.cli.common import _call, _client, _cluster_target, _fail  # noqa: PLC0415
    from meshkit.control.console.proxied import console_path, jupyter_server  # noqa: PLC0415

    if _cluster_target() is not None:
        _fail(EXIT_UNAVAILABLE, "error: meshkit dashboard serves the local control plane; on Kubernetes run "
              "`kubectl -n meshkit-system port-forward svc/meshkit-control 15010` and "
              "`MESHKIT_CONTROL_TOKEN=... meshkit dashboard --control http://127.0.0.1:15010`")
    client = _client(control)
    if client.token is None:
        _fail(EXIT_UNAVAILABLE, "error: no admin token found ($MESHKIT_HOME/control/admin-token, "
              "$MESHKIT_CONTROL_TOKEN): start the mesh with `meshkit up` first")
    _call(client.request, "GET", "proxy-status")  # answers with this token, or says why not
    url = f"{client.url}/ui/#token={client.token}"
    typer.echo(url)
    server = jupyter_server()
    if server is not None:  # JupyterHub / Binder / a Jupyter terminal: the page through jupyter-server-proxy
        try:
            path = console_path(client.url, server.base_url) + f"#token={client.token}"
        except ValueError:
            path = None
        if path is not None and server.url:
            split = urlsplit(server.url)
            typer.echo(f"through Jupyter: {split.scheme}://{split.netloc}{path}")
        elif path is not None:
            typer.echo(f"through Jupyter (append to this server's address): {path}")
    if not no_browser:
        import webbrowser  # noqa: PLC0415

        if not webbrowser.open(url):
            typer.echo("(no browser found here: open the URL above yourself)", err=True)
