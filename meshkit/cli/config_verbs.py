"""Verbs over the control plane's REST API and config: control, apply, get, delete, analyze,
history, rollback, proxy-status, proxy, and kind up/down.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meshkit.cli.common import (
    EXIT_ANALYSIS_ERRORS,
    EXIT_INPUT_UNREADABLE,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    ControlOption,
    FilesOption,
    NamespaceOption,
    Printer,
    _call,
    _client,
    _cluster_target,
    _fail,
    _load,
    _print_changes,
    age,
    app,
    table,
)
from meshkit.cli.jsonpath import JsonPathError, render
from meshkit.cli.kube_tables import (
    POD_KINDS,
    WIDE,
    parse_selector,
    pod_list,
    pod_rows,
    ready_by_deployment,
)
from meshkit.cli.local_workloads import OptionalNamespace, local_workloads, reconcile

if TYPE_CHECKING:
    from meshkit.config.locations import Location
    from meshkit.runtime.local import LocalMesh

# kinds whose deletion the local mesh reconciles (a Gateway API Gateway may have its own proxy process)
WORKLOAD_KIND_NAMES = ("Namespace", "Service", "ServiceAccount", "Deployment",
                       "Gateway.gateway.networking.k8s.io")

# -- verbs ------------------------------------------------------------------------------------------


@app.command()
def control(  # noqa: PLR0917 (typer maps parameters to options)
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API and push stream (0 = any free port).")] = 15010,
    state_dir: Annotated[Path | None, typer.Option(
        help="The control plane's own state dir (default: $MESHKIT_HOME/control).")] = None,
    ca: Annotated[bool, typer.Option(help="Run the certificate authority (for mTLS).")] = True,
    cert_ttl: Annotated[str, typer.Option(
        help="Lifetime of workload certificates (30s, 5m, 24h); sidecars rotate at half.")] = "24h",
    kubernetes: Annotated[bool, typer.Option(
        "--kubernetes", help="Config from the Istio CRDs, endpoints from EndpointSlices and Pods, "
                             "CSRs checked by TokenReview (docs/kubernetes.md).")] = False,
    kubeconfig: Annotated[str | None, typer.Option(
        help="With --kubernetes: this kubeconfig (default: in-cluster, else $KUBECONFIG).")] = None,
    kube_api: Annotated[str | None, typer.Option(
        help="With --kubernetes: an API URL without credentials (kubectl proxy).")] = None,
    max_body: Annotated[int, typer.Option(
        help="Largest request body (a config document) accepted, in bytes; larger: 413.")] = 1024 * 1024,
    keep_revisions: Annotated[int, typer.Option(
        help="Config revisions kept for history and rollback (older ones are pruned).")] = 1000,
    trace_sampling: Annotated[float | None, typer.Option(
        min=0.0, max=100.0,
        help="Percent of requests traced, as meshConfig.defaultConfig.tracing.sampling "
             "(default $MESHKIT_TRACE_SAMPLING, else 1); Telemetry resources override it.")]
    = None,
    trace_export: Annotated[str | None, typer.Option(
        help="Also send every span to a tracing backend: otlp=URL (OTLP/HTTP JSON, e.g. "
             "http://127.0.0.1:4318/v1/traces) or zipkin=URL (default $MESHKIT_TRACE_EXPORT).")] = None,
    ready_port: Annotated[int | None, typer.Option(
        help="With --kubernetes: serve GET /ready on this port, 200 once the cluster is mirrored.")] = None,
    tls_port: Annotated[int | None, typer.Option(
        help="Also serve the API over TLS on this port (istiod's 15012; 0 = any free port), with a "
             "certificate from the mesh's own CA: what a cluster's sidecars use.")] = None,
    tls_host: Annotated[list[str] | None, typer.Option(
        help="A DNS name for that certificate (repeat; default: the meshkit-control Service's "
             "names and localhost).")] = None,
) -> None:
    """Run the control plane (config store, registry, push to sidecars, CA) until Ctrl-C."""
    if max_body < 1024 or keep_revisions < 1:
        _fail(EXIT_REJECTED, f"error: --max-body must be at least 1024 (got {max_body}) and --keep-revisions "
                             f"at least 1 (got {keep_revisions})")
    limits: dict[str, Any] = {"max_body": max_body, "keep_revisions": keep_revisions}
    if tls_port is not None:
        if not ca:
            _fail(EXIT_REJECTED, "error: --tls-port needs the CA (the mesh root issues its certificate)")
        limits["tls_port"] = tls_port
        if tls_host:
            limits["tls_hosts"] = tuple(tls_host)
    if kubernetes:
        _control_on_kubernetes(host, port, state_dir, ca=ca, cert_ttl=cert_ttl, kubeconfig=kubeconfig,
                               kube_api=kube_api, limits=limits, ready_port=ready_port)
        return
    import logging  # noqa: PLC0415

    from meshkit.control.ca import CaError, parse_ttl  # noqa: PLC0415
    from meshkit.control.server import serve  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ttl = parse_ttl(cert_ttl)
    except CaError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    try:
        serve(host, port, state_dir, with_ca=ca, ca_ttl=ttl, announce=lambda text: print(text, flush=True),
              trace_sampling=trace_sampling, trace_export=trace_export, **limits)
    except ValueError as error:  # a --trace-export or $MESHKIT_TRACE_* value that makes no sense
        _fail(EXIT_REJECTED, f"error: {error}")
    except OSError as error:
        _fail(EXIT_UNAVAILABLE, f"error: cannot listen on {host}:{port}: {error}")


def _control_on_kubernetes(host: str, port: int, state_dir: Path | None, *, ca: bool, cert_ttl: str,
                           kubeconfig: str | None, kube_api: str | None, limits: dict[str, Any],
                           ready_port: int | None = None) -> None:
    import logging  # noqa: PLC0415

    from meshkit.control.ca import CaError, parse_ttl  # noqa: PLC0415
    from meshkit.k8s.api import KubeAccess, KubeApiError  # noqa: PLC0415
    from meshkit.k8s.control_plane import serve_kubernetes  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ttl = parse_ttl(cert_ttl)
        access = KubeAccess.url(kube_api) if kube_api else KubeAccess.detect(kubeconfig)
    except (CaError, KubeApiError) as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    except Exception as error:  # the kubernetes package's config loaders raise their own types
        _fail(EXIT_REJECTED, f"error: no Kubernetes API to follow: {error} (run it in a pod, or pass "
                             "--kubeconfig PATH or --kube-api URL, e.g. from kubectl proxy)")
    try:
        serve_kubernetes(access, host, port, state_dir, with_ca=ca, ca_ttl=ttl, **limits,
                         ready_port=ready_port, announce=lambda text: print(text, flush=True))
    except OSError as error:
        _fail(EXIT_UNAVAILABLE, f"error: cannot listen on {host}:{port}: {error}")


@app.command()
def apply(files: FilesOption = None, namespace: OptionalNamespace = None,
          wait: Annotated[bool, typer.Option(
              "--wait", help="Then wait until every proxy the change reaches has ACKed it and show the "
                             "apply-to-effect timeline; exit 1 on a NACK or when --timeout passes.")] = False,
          timeout: Annotated[float, typer.Option(
              min=0.0, max=600.0, help="With --wait: give up after this many seconds.")] = 30.0,
          control: ControlOption = None) -> None:
    """Create or update resources from files (all files are applied as ONE atomic change).

    Istio kinds and the Kubernetes objects of Istio's samples (Namespace, Service, ServiceAccount,
    Deployment) alike; on the local mesh the Deployments then run as instances (docs/local-mesh.md).
    """
    if not files:
        _fail(EXIT_UNAVAILABLE, "error: give at least one -f FILE|DIR|-")
    locations: dict[str, Location] = {}  # where each resource starts, for the messages about it
    documents = _load(files, namespace, locations)
    if not documents:
        _fail(EXIT_REJECTED, "error: no resources found in the input")
    mesh = local_workloads(control, documents)
    client = _client(control)
    result = _call(client.apply, documents, locations=locations)
    _print_changes(result, locations)
    if result.get("changed"):
        Printer().line(f"revision {result['revision']}")
        reconcile(mesh)
    if wait:
        _wait_for_effect(client, int(result["revision"]), timeout)


def _wait_for_effect(client: Any, revision: int, timeout: float) -> None:
    """`apply --wait`: the revision's timeline once every proxy answered; exit 1 on NACK or timeout."""
    from meshkit.cli.timeline_view import render, wait_for  # noqa: PLC0415

    doc = _call(wait_for, client, revision, timeout)
    Printer().out.print(render(doc))
    if doc["state"] == "nacked":
        _fail(EXIT_REJECTED, f"error: revision {revision} was rejected (NACK) by "
                             f"{', '.join(r['id'] for r in doc['proxies'] if r.get('nacked'))}")
    if not doc.get("waited"):
        _fail(EXIT_REJECTED, f"error: not every proxy ACKed revision {revision} within {timeout:g} s")


@app.command()
def get(  # noqa: PLR0917 (typer maps parameters to options)
    kind: Annotated[str, typer.Argument(help="virtualservice|vs, destinationrule|dr, peerauthentication|pa, "
                                             "authorizationpolicy|ap, or all.")],
    name: Annotated[str | None, typer.Argument(help="One resource's name.")] = None,
    namespace: NamespaceOption = "default",
    all_namespaces: Annotated[bool, typer.Option("-A", "--all-namespaces", help="Every namespace.")] = False,
    output: Annotated[str, typer.Option(
        "-o", "--output", help="table, yaml, json or jsonpath=TEMPLATE (kubectl's).")] = "table",
    control: ControlOption = None,
    selector: Annotated[str | None, typer.Option(
        "-l", "--selector", help="pods only: key=value[,key=value] (kubectl get pod -l app=sleep).")] = None,
) -> None:
    """Show resources (a table like kubectl's, or -o yaml|json that `meshkit apply` takes back).

    On the local mesh, `get service istio-ingressgateway -n istio-system -o jsonpath=...` reads the
    ingress gateway's local ports (http2, https, tcp) and address, as Istio's tasks set
    INGRESS_PORT, SECURE_INGRESS_PORT, TCP_INGRESS_PORT and INGRESS_HOST.
    """
    template = output.partition("=")[2] if output.startswith("jsonpath=") else None
    if output not in ("table", "yaml", "json") and template is None:
        _fail(EXIT_UNAVAILABLE,
              f"error: --output must be table, yaml, json or jsonpath=TEMPLATE, not {output!r}")
    if template is not None or output == "json":
        ingress = _ingress_service(kind, name, namespace)
        if ingress is not None:
            _print_doc(ingress, template)
            return
    everything = kind.lower() == "all"
    resolved = None if everything else kind  # the control plane resolves vs, virtualservices, ...
    ns = None if all_namespaces and name is None else namespace
    if kind.lower() in POD_KINDS:
        if selector is not None or output == "json" or template is not None:
            _print_pod_list(ns, selector, template, name)
            return
        _print_pods(ns)
        return
    if selector is not None:
        _fail(EXIT_UNAVAILABLE, "error: -l/--selector is supported for pods only")
    if kind.lower() in ("ns", "namespace", "namespaces"):
        ns = None  # cluster-scoped
    client = _client(control)
    if output == "yaml":
        sys.stdout.write(_call(client.get, resolved, name, ns, "yaml"))
        return
    if output == "json" or template is not None:
        # the yaml answer carries the Gateway API kinds' computed status (`get gtw NAME -o jsonpath=
        # '{.status.addresses[0].value}'`), as kubectl's objects do
        import yaml  # noqa: PLC0415

        resources = [d for d in yaml.safe_load_all(_call(client.get, resolved, name, ns, "yaml")) if d]
        doc = resources[0] if name is not None else {"apiVersion": "v1", "kind": "List", "items": resources}
        _print_doc(doc, template)
        return
    items = _call(client.get, resolved, name, ns)["items"]
    if not items:
        where = "any namespace" if ns is None else f"{ns} namespace"
        Printer().err.print(f"No resources found in {where}.")
        return
    _print_tables(items, show_namespace=ns is None, prefix_kind=everything)


_COLUMNS = {
    "VirtualService": ("HOSTS", lambda spec: json.dumps(spec.get("hosts", []))),
    "DestinationRule": ("HOST", lambda spec: spec.get("host", "")),
    "PeerAuthentication": ("MODE", lambda spec: (spec.get("mtls") or {}).get("mode", "UNSET")),
    "AuthorizationPolicy": ("ACTION", lambda spec: spec.get("action", "ALLOW")),
    "RequestAuthentication": (
        "ISSUERS", lambda spec: ",".join(r.get("issuer", "") for r in spec.get("jwtRules") or [])),
    "HTTPRoute": ("HOSTNAMES", lambda spec: json.dumps(spec.get("hostnames", []))),
    "GatewayClass": ("CONTROLLER", lambda spec: spec.get("controllerName", "")),
}


SERVICE_KINDS = frozenset({"service", "services", "svc"})


def _ingress_service(kind: str, name: str | None, namespace: str) -> dict[str, Any] | None:
    """The local mesh's ``istio-ingressgateway`` Service when that is what is asked (else None)."""
    if kind.lower() not in SERVICE_KINDS or name != "istio-ingressgateway" or namespace != "istio-system":
        return None
    mesh = _local_mesh_or_none()
    return mesh.ingress_service() if mesh is not None else None


def _print_doc(doc: dict[str, Any], template: str | None) -> None:
    if template is None:
        print(json.dumps(doc, indent=2))
        return
    try:
        sys.stdout.write(render(template, doc))
    except JsonPathError as error:
        _fail(EXIT_REJECTED, f"error: {error}")


def _print_pods(namespace: str | None) -> None:
    """`meshkit get pods`: the local mesh's instances, as kubectl shows pods."""
    from meshkit.runtime.local import LocalMesh  # noqa: PLC0415

    mesh = LocalMesh()
    if mesh.record() is None:
        _fail(EXIT_UNAVAILABLE, "error: no local mesh is running; start one with `meshkit up`")
    rows = pod_rows(mesh, namespace)
    if not rows:
        where = "any namespace" if namespace is None else f"{namespace} namespace"
        Printer().err.print(f"No resources found in {where}.")
        return
    header = (["NAMESPACE"] if namespace is None else []) + ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    for line in table([header, *rows]):
        Printer().line(line)


def _print_pod_list(namespace: str | None, selector: str | None, template: str | None,
                    name: str | None = None) -> None:
    """`meshkit get pod -l app=sleep -o jsonpath={.items..metadata.name}`: the matching pods as a List;
    with a ``name``, that Pod (``get pod sleep-0 -n test-egress -o jsonpath={.spec.containers[*].name}``)."""
    mesh = _local_mesh_or_none()
    if mesh is None:
        _fail(EXIT_UNAVAILABLE, "error: no local mesh is running; start one with `meshkit up`")
    try:
        labels = parse_selector(selector)
    except ValueError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    listed = pod_list(mesh, namespace or ("default" if name else None), labels)
    if name is None:
        _print_doc(listed, template)
        return
    found = [item for item in listed["items"] if item["metadata"]["name"] == name]
    if not found:
        _fail(EXIT_REJECTED, f'error: pods "{name}" not found')
    _print_doc(found[0], template)


def _local_mesh_or_none() -> LocalMesh | None:
    if _cluster_target() is not None:
        return None
    from meshkit.runtime.local import LocalMesh  # noqa: PLC0415

    mesh = LocalMesh()
    return mesh if mesh.record() is not None else None


def _print_tables(items: list[dict[str, Any]], *, show_namespace: bool, prefix_kind: bool) -> None:
    printer = Printer()
    kinds = list(dict.fromkeys(item["resource"]["kind"] for item in items))
    context = {"ready": ready_by_deployment(_local_mesh_or_none())} if "Deployment" in kinds else {}
    for index, kind in enumerate(kinds):
        header, cell = _COLUMNS.get(kind, ("", lambda spec: ""))
        headers, wide = WIDE.get(kind, ([header], lambda item, _c, cell=cell: [
            str(cell(item["resource"].get("spec") or {}))]))
        scoped = show_namespace and kind != "Namespace"
        rows = [(["NAMESPACE"] if scoped else []) + ["NAME", *headers, "AGE"]]
        for item in items:
            resource = item["resource"]
            if resource["kind"] != kind:
                continue
            name = resource["metadata"]["name"]
            name = f"{kind.lower()}/{name}" if prefix_kind else name
            rows.append(([resource["metadata"].get("namespace", "default")] if scoped else [])
                        + [name, *wide(item, context), age(item.get("created"))])
        if index:
            printer.line("")
        for line in table(rows):
            printer.line(line)


@app.command()
def delete(
    kind: Annotated[str | None, typer.Argument(help="Kind (vs, dr, pa, ap, ns or the full names).")] = None,
    names: Annotated[list[str] | None, typer.Argument(help="Names of the resources.")] = None,
    files: FilesOption = None,
    namespace: OptionalNamespace = None,
    control: ControlOption = None,
) -> None:
    """Delete resources named in files (-f), all or nothing, or by KIND NAME... (each name on its own,
    as kubectl). Deleting a namespace deletes everything in it: ``meshkit delete ns foo bar legacy``."""
    namespace_given = namespace is not None
    namespace = namespace or "default"
    client = _client(control)
    results: list[dict[str, Any]] = []
    if files:
        if kind or names:
            _fail(EXIT_UNAVAILABLE, "error: give either -f FILE or KIND NAME, not both")
        results.append(_call(client.delete_documents, _load(files, namespace if namespace_given else None)))
    elif kind and names and _ignored_kind(kind):  # `kubectl delete role ...` of a task's cleanup
        Printer().line(f"Warning: kind {_ignored_kind(kind)} is not modelled by the local mesh (its apply "
                       f"was ignored): nothing to delete for {', '.join(names)}")
        return
    elif kind and names:
        for name in names:  # the control plane resolves the kind
            results.append(_call(client.delete, kind, name, namespace))
            _print_changes(results[-1])
    else:
        _fail(EXIT_UNAVAILABLE, "error: give -f FILE or KIND NAME")
    if files:
        _print_changes(results[-1])
    Printer().line(f"revision {results[-1]['revision']}")
    if any(item["resource"].split("/")[0] in WORKLOAD_KIND_NAMES
           for result in results for item in result.get("results", [])):
        from meshkit.runtime.launch import MeshError  # noqa: PLC0415

        mesh = _local_mesh_or_none()
        try:
            if mesh is not None and mesh.running() and mesh.control_url() == client.url:
                reconcile(mesh)
        except MeshError as error:
            _fail(EXIT_REJECTED, f"error: {error}")


def _ignored_kind(kind: str) -> str | None:
    """The kind ``kind`` names (``role``, ``rolebindings``, ``referencegrant``) when the loader always
    ignores it (`meshkit.config.workloads.IGNORED_KINDS`, MK0009), else None."""
    from meshkit.config.workloads import IGNORED_KINDS  # noqa: PLC0415

    wanted = kind.lower().partition(".")[0]
    for known in IGNORED_KINDS - {"ConfigMap", "Secret"}:  # these two are modelled (volumes, credentials)
        if wanted in (known.lower(), f"{known.lower()}s"):
            return known
    return None


@app.command()
def analyze(
    files: FilesOption = None,
    offline: Annotated[bool, typer.Option(help="Analyze the files alone, no control plane.")] = False,
    control: ControlOption = None,
) -> None:
    """Check resources like `istioctl analyze`: files (-f) with the running mesh's config, or the mesh itself.

    With -f and no control plane running, the files are analyzed alone. Each message names the resource,
    its file and line, the field, and the matching Istio code. Exit codes, as istioctl's: 0 no errors
    (warnings and notes never fail), 79 the analysis found errors, 65 the input could not be read
    (a missing file, YAML that does not parse), 2 no control plane to ask.
    """
    from meshkit.cli.analysis import read_for_analysis  # noqa: PLC0415
    from meshkit.config.locations import locate  # noqa: PLC0415
    from meshkit.control.client import ControlUnreachable  # noqa: PLC0415

    read = read_for_analysis(files or [])
    printer = Printer()
    if read.unreadable:
        _fail(EXIT_INPUT_UNREADABLE, "error: the input could not be read",
              locate(read.unreadable, read.index))
    documents = read.documents
    messages: list[dict[str, str]] | None = None
    where = "the files"
    if not offline:
        client = _client(control)
        try:
            messages = client.analyze(documents or None)["messages"] if documents or not files else []
            where = f"the mesh at {client.url}"
        except ControlUnreachable:
            if not files:
                _call(client.analyze)  # prints that no control plane runs, exits 2
    if messages is None:
        from meshkit.config.analyze import analyze as analyze_resources  # noqa: PLC0415
        from meshkit.config.loader import load_resources  # noqa: PLC0415

        found = analyze_resources(load_resources(documents), None) if documents else []
        messages = [m.to_dict() for m in found]
    messages = locate([*read.invalid, *messages], read.index)
    for message in messages:
        printer.message(message)
    if not messages:
        printer.line(f"✔ No validation issues found when analyzing {where}.")
    if any(m.get("severity") == "Error" for m in messages):
        raise typer.Exit(EXIT_ANALYSIS_ERRORS)


@app.command()
def history(
    revision: Annotated[int | None, typer.Argument(help="Show this revision's diff.")] = None,
    timeline: Annotated[bool, typer.Option(
        help="With REVISION: also its apply-to-effect timeline (pushed, ACKed, first request per "
             "proxy).")] = True,
    control: ControlOption = None,
) -> None:
    """List config revisions (REVISION, AGE, SUMMARY), or show one revision's YAML diff and timeline."""
    client = _client(control)
    printer = Printer()
    if revision is not None:
        entry = _call(client.revision, revision)
        printer.line(f"revision {entry['revision']} ({age(entry['timestamp'])} ago): {entry['summary']}")
        sys.stdout.write(entry["diff"])
        if timeline:
            from meshkit.cli.timeline_view import render  # noqa: PLC0415

            printer.out.print(render(_call(client.timeline, revision)))
        return
    doc = _call(client.history)
    rows = [["REVISION", "AGE", "SUMMARY"]]
    rows += [[str(r["revision"]), age(r["timestamp"]), r["summary"]] for r in doc["revisions"]]
    for line in table(rows):
        printer.line(line)
    if not doc["revisions"]:
        printer.line("(no revisions yet)")


@app.command()
def rollback(
    revision: Annotated[int, typer.Argument(help="The revision whose config becomes current again.")],
    control: ControlOption = None,
) -> None:
    """Restore the config as of REVISION, as a new revision."""
    result = _call(_client(control).rollback, revision)
    _print_changes(result)
    if result["changed"]:
        Printer().line(f"rolled back to revision {revision}: now at revision {result['revision']}")
    else:
        Printer().line(f"the config already equals revision {revision}; nothing changed")


@app.command("proxy-status")
def proxy_status(
    output: Annotated[str, typer.Option("-o", "--output", help="table or json.")] = "table",
    wait: Annotated[float | None, typer.Option(
        help="First wait up to this many seconds (max 60) for every connected proxy to be SYNCED; "
             "exit 1 if they are not.")] = None,
    control: ControlOption = None,
) -> None:
    """Each sidecar's acked snapshot version against the latest (SYNCED, STALE, NACKED), like istioctl."""
    doc = _call(_client(control).proxy_status, wait)
    if output == "json":
        print(json.dumps(doc, indent=2))
        if doc.get("synced") is False:
            raise typer.Exit(EXIT_REJECTED)
        return
    printer = Printer()
    rows = [["NAME", "VERSION-ACKED", "LATEST", "STATUS", "STREAM"]]
    for proxy in doc["proxies"]:
        status = proxy["status"] + (f" ({proxy['reason']})" if proxy.get("reason") else "")
        stream = "connected" if proxy["connected"] else f"disconnected {age(proxy.get('disconnected_at'))}"
        rows.append([proxy["id"], proxy["acked"] or "-", proxy["latest"] or "-", status, stream])
    for line in table(rows):
        printer.line(line)
    if not doc["proxies"]:
        printer.line("(no proxies connected)")
    if doc.get("synced") is False:
        _fail(EXIT_REJECTED, f"error: not every connected proxy was SYNCED within {wait:g} s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def proxy(ctx: typer.Context) -> None:
    """Run a sidecar proxy (arguments go to `python -m meshkit.proxy`; see `meshkit proxy --help`)."""
    try:
        from meshkit.proxy.main import main as proxy_main  # noqa: PLC0415
    except ImportError as error:
        _fail(EXIT_UNAVAILABLE, f"error: the sidecar is not available in this installation ({error})")
    raise typer.Exit(proxy_main(list(ctx.args)))


kind_app = typer.Typer(help="A local kind cluster running meshkit (needs docker, kind and kubectl).",
                       no_args_is_help=True)
app.add_typer(kind_app, name="kind")


def _run_kind(action: str, **options: Any) -> None:
    from meshkit.k8s import kind  # noqa: PLC0415 (lazy: only this verb needs it)

    try:
        getattr(kind, action)(kind.KindOptions(**options), progress=lambda line: print(line, flush=True))
    except kind.KindError as error:
        _fail(EXIT_REJECTED, f"error: {error}")


@kind_app.command("up")
def kind_up(
    cluster: Annotated[str, typer.Option(help="kind cluster name.")] = "meshkit",
    demo: Annotated[bool, typer.Option(help="Also deploy the Bookinfo demo.")] = True,
    root: Annotated[Path | None, typer.Option(
        help="The meshkit checkout holding operator/ (default: found upwards from here).")] = None,
    wait_timeout: Annotated[int, typer.Option(help="Seconds to wait for the rollouts.")] = 300,
) -> None:
    """Create (or reuse) the kind cluster, build and load the image, deploy meshkit, wait for it."""
    _run_kind("up", cluster=cluster, demo=demo, root=root, wait_timeout_s=wait_timeout)


@kind_app.command("down")
def kind_down(cluster: Annotated[str, typer.Option(help="kind cluster name.")] = "meshkit") -> None:
    """Delete the kind cluster."""
    _run_kind("down", cluster=cluster)
