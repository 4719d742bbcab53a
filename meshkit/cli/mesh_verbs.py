"""Verbs that run the local mesh: up, down, status, deploy, scale, curl, exec, logs, kill, restart, load, top.

Thin like the rest of the CLI: each verb parses options, calls `meshkit.runtime` and prints
(rich progress for what takes time, kubectl-like tables for what is read).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meshkit.cli.common import EXIT_REJECTED, EXIT_UNAVAILABLE, Printer, _fail, app, table

if TYPE_CHECKING:
    from rich.progress import Progress as ProgressBar

    from meshkit.runtime.launch import Progress
    from meshkit.runtime.local import LocalMesh

OutputOption = Annotated[str, typer.Option("-o", "--output", help="table or json.")]


def _mesh() -> LocalMesh:
    from meshkit.runtime.local import LocalMesh  # noqa: PLC0415

    return LocalMesh()


def _running_mesh() -> LocalMesh:
    mesh = _mesh()
    if mesh.record() is None:
        _fail(EXIT_UNAVAILABLE, "error: no local mesh is running; start one with `meshkit up`")
    return mesh


def _replicas(values: list[str], what: str = "--replicas ") -> dict[str, int]:
    replicas: dict[str, int] = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not count.isdigit():
            _fail(EXIT_REJECTED, f"error: {what}{value!r}: expected WORKLOAD=N, e.g. reviews-v1=2")
        replicas[name] = int(count)
    return replicas


def _progress_bar(steps: int) -> tuple[ProgressBar, Progress]:
    """A transient rich progress bar and the `Progress` callback that drives it."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True)
    task = bar.add_task("starting", total=steps)

    def progress(what: str, done: int, total: int) -> None:
        bar.update(task, description=what, completed=done, total=total)

    return bar, progress


EGRESS_GATEWAY_SETTING = "components.egressGateways[0].enabled"


def _egress_gateway_setting(settings: list[str]) -> tuple[bool, list[str]]:
    """istioctl's ``--set components.egressGateways[0].enabled=true|false``, and the other settings."""
    enabled, rest = False, []
    for item in settings:
        path, _, raw = item.partition("=")
        if path.strip() != EGRESS_GATEWAY_SETTING:
            rest.append(item)
            continue
        value = raw.strip().lower()
        if value not in ("true", "false"):
            raise ValueError(f"--set {item!r}: expected {EGRESS_GATEWAY_SETTING}=true or =false")
        enabled = value == "true"
    return enabled, rest


@app.command()
def up(  # noqa: PLR0917 (typer maps parameters to options)
    app_sets: Annotated[list[str] | None, typer.Option(
        "--app", help="App set to run: bookinfo, httpbin, clients, external, none. Repeatable.")] = None,
    replicas: Annotated[list[str] | None, typer.Option(
        "--replicas", help="WORKLOAD=N instances, e.g. reviews-v1=2. Repeatable.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the mesh to be ready.")] = 60.0,
    cert_ttl: Annotated[str, typer.Option(
        help="Workload certificate lifetime (30s, 5m, 24h); sidecars rotate at half.")] = "24h",
    settings: Annotated[list[str] | None, typer.Option(
        "--set", help="istioctl install's meshConfig values, e.g. "
                      "meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY, and "
                      "components.egressGateways[0].enabled=true (the egress gateway, as the demo "
                      "profile), values.global.proxy.includeIPRanges=CIDR[,CIDR] / excludeIPRanges "
                      "(what sidecars intercept; default *). Repeatable.")] = None,
    real_dns: Annotated[bool, typer.Option(
        "--real-dns", help="Sidecars resolve external hosts with the system resolver (real internet) "
                           "instead of the local stand-ins (`--app external`).")] = False,
) -> None:
    """Start the local mesh: control plane, apps, one sidecar each, ingress gateway (127.0.0.1).

    On a running mesh it adds what is asked and missing (app sets, --replicas), as `deploy`/`scale`.
    ``--set meshConfig...`` writes Istio's mesh config ConfigMap (istio-system/istio), as istioctl does;
    ``--set values.global.proxy.includeIPRanges/excludeIPRanges`` what the sidecars intercept (each
    ``up`` without them goes back to Istio's default, everything, as istioctl install does).
    """
    from meshkit.config.ip_ranges import interception_settings  # noqa: PLC0415
    from meshkit.config.meshconfig import set_values  # noqa: PLC0415
    from meshkit.runtime import interception  # noqa: PLC0415
    from meshkit.runtime.local import MeshError  # noqa: PLC0415

    try:
        egress_gateway, settings = _egress_gateway_setting(settings or [])
        intercepted, settings = interception_settings(settings)
        mesh_config = set_values(settings) if settings else None
    except ValueError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    mesh = _mesh()
    started = time.monotonic()
    bar, progress = _progress_bar(4)
    with bar:
        try:
            status = mesh.up(app_sets or None, _replicas(replicas or []), progress=progress,
                             timeout=timeout, cert_ttl=cert_ttl, mesh_config=mesh_config)
            interception.write(mesh.state, intercepted)  # as istioctl install: unset means the default
            if real_dns:
                mesh.client().set_external({}, real_dns=True)
            if egress_gateway:  # as `meshkit deploy egressgateway`
                status = mesh.deploy(["egressgateway"], timeout=timeout)
        except (MeshError, ValueError) as error:
            _fail(EXIT_REJECTED, f"error: {error}")
    printer = Printer()
    printer.line(f"mesh ready in {time.monotonic() - started:.1f}s: {len(status['workloads'])} workloads")
    printer.line(f"  control plane  {status['control']}")
    printer.line(f"  ingress        {status['ingress']}/productpage")
    printer.line("next: `meshkit status`, `meshkit apply -f rule.yaml`, `meshkit load`, `meshkit top`")


@app.command()
def down() -> None:
    """Stop every process of the local mesh (even after a crash of the CLI that started it)."""
    mesh = _mesh()
    if mesh.record() is None:
        mesh.down()  # nothing recorded, but it still stops what a CLI killed mid-start left unrecorded
        Printer().line("no local mesh is running")
        return
    killed = mesh.down()
    Printer().line("mesh stopped" + (f" ({', '.join(killed)} had to be killed)" if killed else ""))


@app.command()
def status(output: OutputOption = "table") -> None:
    """Show the local mesh: URLs, and every workload with its pids, ports and health."""
    state = _mesh().status()
    if output == "json":
        typer.echo(json.dumps(state, indent=2))
        return
    if state["control"] is None:
        _fail(EXIT_UNAVAILABLE, "no local mesh is running; start one with `meshkit up`")
    printer = Printer()
    printer.line(f"control plane  {state['control']}")
    printer.line(f"ingress        {state['ingress']}   (HTTPS Gateway servers: {state['ingress_https']}, "
                 f"TCP Gateway servers: {state['ingress_tcp']})")
    rows = [["NAME", "SERVICE", "VERSION", "READY", "APP", "INBOUND", "OUTBOUND PROXY", "ADMIN"]]
    for w in state["workloads"]:
        rows.append([w["name"], w["service"], w["version"], "yes" if w["healthy"] else "NO",
                     str(w["app_port"]), str(w["inbound_port"] or "-"), w["outbound_proxy"] or "(no sidecar)",
                     str(w["admin_port"] or "-")])
    for line in table(rows):
        printer.line(line)
    printer.line("")
    printer.line("what the local mesh cannot protect (docs/security.md, threat model):")
    for line in LOCAL_LIMITS:
        printer.line(f"  - {line}")


LOCAL_LIMITS = (
    "any local user can reach the apps' own ports (APP) directly, past the sidecar: only the "
    "mesh's ports (INBOUND) enforce mTLS and AuthorizationPolicy; on Kubernetes, pods are apart",
    "any local user can send through a workload's OUTBOUND PROXY port and be seen as that "
    "workload: keep untrusted users off this machine (or run the mesh in its own container)",
    "the admin token and CA tokens are files readable by your user only (0600); every process "
    "of your user can read them, as it can read your kubeconfig",
)


@app.command()
def deploy(
    app_sets: Annotated[list[str], typer.Argument(
        help="App sets to add: bookinfo, httpbin, clients, external (stand-ins for httpbin.org, "
             "edition.cnn.com, www.google.com), egressgateway (istio-egressgateway in istio-system).")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the new instances.")] = 60.0,
) -> None:
    """Add app sets to the running mesh (like `kubectl apply -f samples/sleep/sleep.yaml`)."""
    from meshkit.runtime.local import MeshError  # noqa: PLC0415

    mesh = _running_mesh()
    started = time.monotonic()
    bar, progress = _progress_bar(3)
    with bar:
        try:
            state = mesh.deploy(app_sets, progress=progress, timeout=timeout)
        except (MeshError, ValueError) as error:
            _fail(EXIT_REJECTED, f"error: {error}")
    Printer().line(f"deployed {', '.join(app_sets)} in {time.monotonic() - started:.1f}s: "
                   f"{len(state['workloads'])} workloads")


@app.command()
def scale(
    workloads: Annotated[list[str], typer.Argument(help="WORKLOAD=N, e.g. reviews-v1=2 (0 to 10).")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the new instances.")] = 60.0,
) -> None:
    """Run N instances of a workload (like `kubectl scale deployment reviews-v1 --replicas=2`)."""
    from meshkit.runtime.local import MeshError  # noqa: PLC0415

    counts = _replicas(workloads, "scale ")
    mesh = _running_mesh()
    bar, progress = _progress_bar(3)
    with bar:
        for name, count in counts.items():
            try:
                mesh.scale(name, count, progress=progress, timeout=timeout)
            except MeshError as error:
                _fail(EXIT_REJECTED, f"error: {error}")
    for name, count in counts.items():
        Printer().line(f"{name} scaled to {count}")


@app.command()
def curl(  # noqa: PLR0917 (typer maps parameters to options)
    url: Annotated[str, typer.Argument(help="URL as the app calls it: http://reviews:9080/reviews/0")],
    source: Annotated[str, typer.Option("--from", help="Workload instance to send from, e.g. sleep-v1-0.")],
    header: Annotated[list[str] | None, typer.Option("-H", "--header", help="'Name: value'.")] = None,
    method: Annotated[str, typer.Option("-X", "--request", help="HTTP method.")] = "GET",
    data: Annotated[str | None, typer.Option("-d", "--data", help="Request body.")] = None,
    include: Annotated[bool, typer.Option("-i", "--include", help="Show response headers.")] = False,
    namespace: Annotated[str | None, typer.Option(
        "-n", "--namespace", help="The namespace of --from (kubectl exec -n): --from sleep -n foo "
                                  "is sleep.foo.")] = None,
    silent: Annotated[bool, typer.Option("-s", "--silent", help="No error text (curl -s).")] = False,
    show_error: Annotated[bool, typer.Option("-S", "--show-error",
                                             help="With -s, still say what failed (curl -sS).")] = False,
    output: Annotated[str | None, typer.Option("-o", "--output", help="Write the body to FILE.")] = None,
    write_out: Annotated[str | None, typer.Option(
        "-w", "--write-out", help="Print this after the transfer, as curl: %{http_code} (000 for no "
                                  "answer), \\n.")] = None,
    insecure: Annotated[bool, typer.Option("-k", "--insecure",
                                           help="https://: do not check the server's certificate.")] = False,
    cacert: Annotated[str | None, typer.Option(
        "--cacert", help="https://: check the server's certificate against this CA bundle (PEM) instead of "
                         "the pod's (system CAs + the external stand-ins' CA).")] = None,
    haproxy_protocol: Annotated[bool, typer.Option(
        "--haproxy-protocol", help="Start the connection with a PROXY protocol v1 line, as curl does "
                                   "(to an ingress gateway with gatewayTopology.proxyProtocol).")] = False,
    haproxy_clientip: Annotated[str | None, typer.Option(
        "--haproxy-clientip", help="The client address that line carries (curl 8.2's option); implies "
                                   "--haproxy-protocol.")] = None,
) -> None:
    """Send one request from a workload through its sidecar (like `kubectl exec sleep -- curl`).

    From `legacy` (no sidecar) it goes in plaintext straight to one instance of the URL's service.
    Short host names resolve in the sender's namespace, `httpbin.bar` in namespace bar.
    https:// URLs go through a CONNECT tunnel of the sidecar, the TLS being the app's own.
    """
    if namespace and namespace != "default" and not source.endswith(f".{namespace}"):
        source = f"{source}.{namespace}"
    from meshkit.runtime.curl import CurlError  # noqa: PLC0415
    from meshkit.runtime.curl import curl as send  # noqa: PLC0415
    from meshkit.runtime.egress_gate import mesh_egress_gate  # noqa: PLC0415

    mesh = _running_mesh()
    try:
        result = send(mesh.state, mesh.status()["workloads"], source, url, method=method,
                      headers=header or [], body=data, insecure=insecure, cacert=cacert,
                      haproxy_protocol=haproxy_protocol, haproxy_clientip=haproxy_clientip,
                      egress=mesh_egress_gate(mesh))  # NetworkPolicy, for a source without a sidecar
    except CurlError as error:
        where = f"--from {source}" if error.field == "from" else error.field
        _fail(EXIT_REJECTED, f"error: {where}: {error.message}")
    if result.status is None:
        if write_out is not None:
            sys.stdout.write(_write_out(write_out, 0))
            sys.stdout.flush()
        if silent and not show_error:
            raise typer.Exit(EXIT_UNAVAILABLE)
        _fail(EXIT_UNAVAILABLE, f"error: {url} from {result.source}: {result.error}")
    head = "".join(f"{name}: {value}\n" for name, value in result.headers)
    shown = (f"{result.status_line}\n{head}\n" if include else "") + result.text + "\n"
    if output is not None:
        try:
            Path(output).write_text(shown, encoding="utf-8")
        except OSError as error:
            _fail(EXIT_REJECTED, f"error: -o {output}: {error}")
    else:
        sys.stdout.write(shown)
    if write_out is not None:
        sys.stdout.write(_write_out(write_out, result.status))
    sys.stdout.flush()
    if result.status >= 400:
        raise typer.Exit(EXIT_REJECTED)


def _write_out(template: str, status: int) -> str:
    """curl's ``-w``: ``%{http_code}`` (``000`` when nothing answered) and the ``\\n``/``\\t`` escapes."""
    return template.replace("%{http_code}", f"{status:03d}").replace("\\n", "\n").replace("\\t", "\t")


@app.command(name="exec", context_settings={"ignore_unknown_options": True})
def exec_(
    target: Annotated[str, typer.Argument(help="Pod (instance), deploy/NAME, or a workload's name.")],
    command: Annotated[list[str] | None, typer.Argument(
        help="After --: the command, as Istio's task runs it.")] = None,
    container: Annotated[str | None, typer.Option(
        "-c", "--container",
        help="fortio, curl...; istio-proxy for the sidecar (pilot-agent request GET stats).")] = None,
    _stdin: Annotated[bool, typer.Option("-i", "--stdin", help="Accepted, as kubectl's (no effect).")]
    = False,
    _tty: Annotated[bool, typer.Option("-t", "--tty", help="Accepted, as kubectl's (no effect).")] = False,
    namespace: Annotated[str | None, typer.Option(
        "-n", "--namespace", help="The pod's namespace (kubectl exec -n): sleep -n foo is sleep.foo.")]
    = None,
) -> None:
    """Run a command of Istio's tasks in a workload, as `kubectl exec POD -- COMMAND` does.

    Supported: curl (with the flags the tasks use), fortio curl and fortio load (the
    circuit-breaking task), and pilot-agent request GET stats in the istio-proxy container.
    """
    from meshkit.runtime.egress_gate import mesh_egress_gate  # noqa: PLC0415
    from meshkit.runtime.exec_command import ExecError, execute  # noqa: PLC0415

    mesh = _running_mesh()
    kind, slash, name = target.rpartition("/")
    if namespace and namespace != "default" and not name.endswith(f".{namespace}"):
        target = f"{kind}{slash}{name}.{namespace}"
    try:
        code = execute(mesh.state, mesh.status()["workloads"], target, list(command or []),
                       out=lambda text: typer.echo(text, nl=False), container=container,
                       egress=mesh_egress_gate(mesh), err=lambda text: typer.echo(text, nl=False, err=True))
    except ExecError as error:
        _fail(EXIT_REJECTED, f"error: exec {target}: {error}")
    raise typer.Exit(code)


@app.command()
def logs(  # noqa: PLR0917 (typer: one parameter per option)
    instance: Annotated[str | None, typer.Argument(
        help="Workload instance, e.g. reviews-v1-0 (or control); or -l.")] = None,
    sidecar: Annotated[bool, typer.Option("--sidecar", help="The sidecar's log, not the app's.")] = False,
    access: Annotated[bool, typer.Option("--access", help="The sidecar's JSON access log.")] = False,
    selector: Annotated[str | None, typer.Option(
        "-l", "--selector", help="Instances by pod labels, key=value[,key=value] (kubectl's -l).")] = None,
    container: Annotated[str | None, typer.Option(
        "-c", "--container",
        help="istio-proxy: the proxy's access log (what Istio's istio-proxy container prints with "
             "meshConfig.accessLogFile=/dev/stdout); another name: the app.")] = None,
    tail: Annotated[int, typer.Option(help="Lines from the end (0 = all).")] = 50,
    namespace: Annotated[str | None, typer.Option(
        "-n", "--namespace", help="With -l: only pods of this namespace (kubectl logs -l ... -n NS).")] \
        = None,
) -> None:
    """Print the log of a workload, its sidecar (--sidecar) or its access log (--access).

    `kubectl logs -l istio=egressgateway -c istio-proxy -n istio-system` is the same command here
    (without -c too: a gateway pod's one container is its proxy, so -l prints its access log).

    `kubectl logs -l gateway.networking.k8s.io/gateway-name=cnn-egress-gateway -c istio-proxy` is
    `meshkit logs -l gateway.networking.k8s.io/gateway-name=cnn-egress-gateway -c istio-proxy`.
    """
    from meshkit.runtime.local import MeshError  # noqa: PLC0415

    if (instance is None) == (selector is None):
        _fail(EXIT_UNAVAILABLE, "error: give an instance or -l key=value, not both")
    if instance is not None and namespace not in (None, "default") and "." not in instance:
        instance = f"{instance}.{namespace}"  # kubectl logs sleep-0 -n test-egress
    access = access or container == "istio-proxy"
    mesh = _running_mesh()
    try:
        names = [instance] if instance is not None else mesh.select(selector or "", namespace)
        # -l with no -c: a gateway pod's one container is istio-proxy, whose log is the access log
        paths = [mesh.log_path(name, sidecar=sidecar, access=access or (
            selector is not None and container is None and mesh.is_gateway_pod(name))) for name in names]
    except MeshError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    if not names:
        _fail(EXIT_REJECTED, f"error: no instance matches the selector {selector}")
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            if selector is not None:
                continue  # kubectl logs -l prints the pods that have a log
            _fail(EXIT_REJECTED, f"error: no log at {path}")
        for line in lines[-tail:] if tail else lines:
            typer.echo(line)


@app.command()
def kill(instance: Annotated[str, typer.Argument(help="Workload instance, e.g. reviews-v1-1.")]) -> None:
    """Kill one instance's app abruptly (SIGKILL), as a crashing pod; its sidecar stays up."""
    from meshkit.runtime.local import MeshError  # noqa: PLC0415

    try:
        _running_mesh().kill(instance)
    except MeshError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    Printer().line(f"{instance} killed")


@app.command()
def restart(instance: Annotated[str, typer.Argument(
        help="Workload instance, e.g. reviews-v1-1, or ingressgateway.")]) -> None:
    """Start one instance's app again on its port, and its sidecar too if that died (new certificate)."""
    from meshkit.runtime.local import MeshError  # noqa: PLC0415

    try:
        _running_mesh().restart(instance)
    except MeshError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    Printer().line(f"{instance} restarted")


@app.command()
def load(
    rps: Annotated[float, typer.Option(help="Requests per second.")] = 10.0,
    duration: Annotated[float, typer.Option(help="Seconds to run.")] = 30.0,
    users: Annotated[str | None, typer.Option(help="Signed-in users' shares, e.g. jason:10%.")] = None,
    path: Annotated[str, typer.Option(help="Path on the ingress.")] = "/productpage",
) -> None:
    """Send steady traffic through the ingress gateway, with a live progress line."""
    from rich.live import Live  # noqa: PLC0415

    from meshkit.runtime.load import LoadGenerator, parse_users  # noqa: PLC0415

    state = _running_mesh().status()
    try:
        gen = LoadGenerator(f"{state['ingress']}{path}", rps=rps, duration=duration, users=parse_users(users))
    except ValueError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    gen.start()
    with Live(_load_line(gen.stats), refresh_per_second=4, transient=True) as live:
        try:
            while gen.running():
                time.sleep(0.25)
                live.update(_load_line(gen.stats))
        except KeyboardInterrupt:
            pass
        summary = gen.stop()
    Printer().line(_load_line(summary))


def _load_line(s: dict[str, Any]) -> str:
    codes = " ".join(f"{k}:{v}" for k, v in s["codes"].items()) or "-"
    return (f"sent {s['sent']}  done {s['completed']}  {s['rps']:.1f} req/s  errors {s['error_rate']:.1%}  "
            f"p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  codes {codes}")


@app.command()
def top(
    window: Annotated[float, typer.Option(help="Seconds of history each line covers.")] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="Print one table and exit.")] = False,
    output: OutputOption = "table",
) -> None:
    """Live request rate, errors and latency per edge (source workload -> destination version)."""
    from rich.live import Live  # noqa: PLC0415

    from meshkit.cli.common import _call, _client  # noqa: PLC0415

    client = _client(None)

    def fetch() -> dict[str, Any]:
        result: dict[str, Any] = _call(client.request, "GET", "telemetry", query={"window": window})
        return result

    if once or output == "json":
        answer = fetch()
        if output == "json":
            typer.echo(json.dumps(answer, indent=2))
        else:
            for line in _top_lines(answer):
                typer.echo(line)
        return
    with Live("", refresh_per_second=1) as live:
        try:
            while True:
                live.update("\n".join(_top_lines(fetch())))
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass


def _top_lines(answer: dict[str, Any]) -> list[str]:
    rows = [["SOURCE", "DESTINATION", "VERSION", "RPS", "ERRORS", "P50 ms", "P99 ms", "mTLS", "FLAGS"]]
    for e in answer["edges"]:
        lat = e["latency_ms"]
        rows.append([
            e["source_workload"], e["destination_service"], e["destination_version"], f"{e['rps']:.1f}",
            f"{e['error_rate']:.1%}", _ms(lat["p50"]), _ms(lat["p99"]), "yes" if e["mtls"] else "no",
            ",".join(f"{k}:{v}" for k, v in e["flags"].items()) or "-",
        ])
    if len(rows) == 1:
        return [f"no traffic in the last {answer['window']:.0f}s (try `meshkit load`)"]
    return table(rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@app.command()
def lab(
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser.")] = False,
    port: Annotated[int, typer.Option(help="JupyterLab's port.")] = 8888,
    labs_dir: Annotated[str, typer.Option("--dir", help="Folder of lab notebooks.")] = "labs",
) -> None:
    """Start the local mesh (if needed) and JupyterLab on the labs, opened on the first lab.

    Stopping JupyterLab (Ctrl-C twice, or closing it from its File menu) stops the mesh this command
    started; a mesh that was already running keeps running (`meshkit down` stops it).
    """
    import importlib.util  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from meshkit.lab.jupyter import JupyterSession, settings_dir  # noqa: PLC0415

    if importlib.util.find_spec("jupyterlab") is None:
        _fail(EXIT_UNAVAILABLE, "error: JupyterLab is not installed here; install the lab extra: "
              "pip install -e '.[lab]' (or run ./dev lab)")
    folder = Path(labs_dir)
    if not folder.is_dir():
        _fail(EXIT_REJECTED, f"error: {folder} is not a folder of labs (run in the checkout, or --dir)")
    mesh = _mesh()
    started_here = mesh.record() is None  # a mesh that exists (even partly dead) is not ours to stop
    up(app_sets=None, replicas=None, timeout=60.0)
    printer = Printer()

    def after_jupyter() -> None:
        if started_here:
            mesh.down()
            printer.line("JupyterLab stopped; the mesh it started is stopped too")
        else:
            printer.line("JupyterLab stopped; the mesh keeps running (`meshkit down` stops it)")

    session = JupyterSession(folder, port, open_browser=not no_browser,
                             settings=settings_dir(mesh.state.root / "lab"))
    raise typer.Exit(session.run(after_jupyter))
