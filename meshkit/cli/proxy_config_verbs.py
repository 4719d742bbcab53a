"""proxy-config (alias pc): istioctl's view of one proxy, read from the proxy's own admin pages.

`meshkit proxy-config cluster|endpoint|secret|route|listener POD` prints istioctl's tables
(`meshkit.runtime.proxy_config`) from what the sidecar or gateway really holds (``/config_dump``,
``/clusters``, ``/certs``), not from the control plane; ``-o json|yaml`` prints that data. POD is
resolved by `meshkit.runtime.proxy_target`. It must not hold logic beyond parsing and printing.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Annotated, Any

import typer

from meshkit.cli.common import EXIT_REJECTED, EXIT_UNAVAILABLE, Printer, _fail, app, table

pc_app = typer.Typer(help="istioctl proxy-config: a proxy's clusters, endpoints, secrets, routes and "
                          "listeners, from its own admin pages.", no_args_is_help=True)
app.add_typer(pc_app, name="proxy-config")
app.add_typer(pc_app, name="pc", help="Alias of proxy-config (istioctl pc).")

Pod = Annotated[str, typer.Argument(help="pod-name[.namespace], or deploy/NAME (istioctl's forms).")]
Namespace = Annotated[str | None, typer.Option("-n", "--namespace", help="The pod's namespace.")]
Output = Annotated[str, typer.Option("-o", "--output", help="short (the table), json or yaml.")]


def _admin(target: str, namespace: str | None) -> tuple[str, int]:
    from meshkit.runtime.local import LocalMesh  # noqa: PLC0415
    from meshkit.runtime.proxy_target import TargetError, admin_of  # noqa: PLC0415

    mesh = LocalMesh()
    rec = mesh.record()
    if rec is None:
        _fail(EXIT_UNAVAILABLE, "error: no local mesh is running; start one with `meshkit up`")
    try:
        return admin_of(rec, mesh.status()["workloads"], target, namespace)
    except TargetError as error:
        _fail(EXIT_REJECTED, f"Error: {error}")
    raise AssertionError("unreachable")


def _page(name: str, port: int, path: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            doc: dict[str, Any] = json.loads(answer.read())
            return doc
    except (OSError, urllib.error.URLError, ValueError) as error:
        _fail(EXIT_UNAVAILABLE, f"Error: failed to retrieve {path.lstrip('/')} from {name}: the proxy's "
                                f"admin port 127.0.0.1:{port} does not answer ({error})")
    raise AssertionError("unreachable")


def _show(output: str, data: Any, rows: Callable[[], list[list[str]]]) -> None:
    from meshkit.runtime.proxy_config import ProxyConfigError  # noqa: PLC0415

    if output == "json":
        print(json.dumps(data, indent=2, default=str))
        return
    if output == "yaml":
        import yaml  # noqa: PLC0415

        print(yaml.safe_dump(data, sort_keys=False), end="")
        return
    if output != "short":
        _fail(EXIT_REJECTED, f"Error: unknown output format {output!r}: short, json or yaml")
    try:
        lines = table(rows())
    except ProxyConfigError as error:
        _fail(EXIT_REJECTED, f"Error: {error}")
    printer = Printer()
    for line in lines:
        printer.line(line)


@pc_app.command("cluster")
@pc_app.command("clusters", hidden=True)
@pc_app.command("c", hidden=True)
def cluster(  # noqa: PLR0917 (typer: one parameter per option)
    pod: Pod, namespace: Namespace = None, output: Output = "short",
    fqdn: Annotated[str | None, typer.Option(
        "--fqdn", help="Only clusters whose FQDN contains this.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Only clusters of this port.")] = None,
    subset: Annotated[str | None, typer.Option("--subset", help="Only clusters of this subset.")] = None,
    direction: Annotated[str | None, typer.Option(
        "--direction", help="Only inbound or outbound clusters.")] = None,
) -> None:
    """The proxy's clusters: SERVICE FQDN, PORT, SUBSET, DIRECTION, TYPE, DESTINATION RULE."""
    from meshkit.runtime.proxy_config import cluster_rows, envoy_name  # noqa: PLC0415

    name, admin = _admin(pod, namespace)
    dump = _page(name, admin, "/config_dump")
    clusters = (dump.get("snapshot") or {}).get("clusters") or {}
    shown = cluster_rows(dump, fqdn_filter=fqdn, port=port, subset=subset, direction=direction)
    kept = {(r[0], r[1], r[2]) for r in shown[1:]}
    data = [{"name": envoy_name(c), **c} for c in clusters.values()
            if (envoy_name(c).split("|")[3], str(c.get("port")), c.get("subset") or "-") in kept]
    _show(output, data, lambda: shown)


@pc_app.command("endpoint")
@pc_app.command("endpoints", hidden=True)
@pc_app.command("ep", hidden=True)
def endpoint(  # noqa: PLR0917 (typer: one parameter per option)
    pod: Pod, namespace: Namespace = None, output: Output = "short",
    cluster_name: Annotated[str | None, typer.Option(
        "--cluster", help="Only this cluster (outbound|9080|v1|reviews.default.svc.cluster.local).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Only endpoints of this port.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only healthy or unhealthy endpoints.")]
    = None,
) -> None:
    """The proxy's endpoints: ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER."""
    from meshkit.runtime.proxy_config import endpoint_rows  # noqa: PLC0415

    name, admin = _admin(pod, namespace)
    dump = _page(name, admin, "/config_dump")
    view = _page(name, admin, "/clusters")
    _show(output, view, lambda: endpoint_rows(view, dump, cluster=cluster_name, port=port, status=status))


@pc_app.command("secret")
@pc_app.command("secrets", hidden=True)
@pc_app.command("s", hidden=True)
def secret(pod: Pod, namespace: Namespace = None, output: Output = "short") -> None:
    """The proxy's certificates: default (workload), ROOTCA, and a gateway's kubernetes:// credentials."""
    from meshkit.runtime.proxy_config import credentials, secret_rows  # noqa: PLC0415

    name, admin = _admin(pod, namespace)
    certs = _page(name, admin, "/certs")
    dump = _page(name, admin, "/config_dump")
    data = {**certs, "credentials": [{"name": n, "type": k, **v} for n, k, v in credentials(dump)]
            if dump.get("snapshot") else []}
    _show(output, data, lambda: secret_rows(certs, dump))


@pc_app.command("route")
@pc_app.command("routes", hidden=True)
@pc_app.command("r", hidden=True)
def route(
    pod: Pod, namespace: Namespace = None, output: Output = "short",
    route_name: Annotated[str | None, typer.Option("--name", help="Only this route config (its port).")]
    = None,
) -> None:
    """The proxy's HTTP routes: NAME, VHOST NAME, DOMAINS, MATCH, VIRTUAL SERVICE."""
    from meshkit.runtime.proxy_config import route_rows  # noqa: PLC0415

    name, admin = _admin(pod, namespace)
    dump = _page(name, admin, "/config_dump")
    hosts = ((dump.get("snapshot") or {}).get("outbound") or {}).get("virtual_hosts") or []
    data = [h for h in hosts if route_name is None or str(h.get("port")) == route_name]
    _show(output, data, lambda: route_rows(dump, name=route_name))


@pc_app.command("listener")
@pc_app.command("listeners", hidden=True)
@pc_app.command("l", hidden=True)
def listener(
    pod: Pod, namespace: Namespace = None, output: Output = "short",
    port: Annotated[int | None, typer.Option("--port", help="Only listeners of this port.")] = None,
) -> None:
    """The proxy's listeners, as Istio's virtual listeners: ADDRESSES, PORT, MATCH, DESTINATION."""
    from meshkit.runtime.proxy_config import LISTENER_HEADER, listener_rows  # noqa: PLC0415

    name, admin = _admin(pod, namespace)
    dump = _page(name, admin, "/config_dump")
    rows = listener_rows(dump, port=port) if dump.get("snapshot") else [LISTENER_HEADER]
    data = [dict(zip([h.lower() for h in rows[0]], row, strict=True)) for row in rows[1:]]
    _show(output, data, lambda: listener_rows(dump, port=port))


@pc_app.command("all")
def all_(pod: Pod, namespace: Namespace = None,
         output: Annotated[str, typer.Option("-o", "--output", help="json or yaml: the whole config dump.")]
         = "json") -> None:
    """The proxy's whole /config_dump (istioctl proxy-config all -o json)."""
    name, admin = _admin(pod, namespace)
    dump = _page(name, admin, "/config_dump")
    if output not in ("json", "yaml"):
        _fail(EXIT_REJECTED, "Error: proxy-config all prints -o json or -o yaml")
    _show(output, dump, list)
