"""kubectl's verbs that edit one object in place: ``create namespace``, ``label namespace``, ``patch``, and
istioctl's ``kube-inject``. Each reads the stored object, changes it and applies it whole, so the
control plane validates it as any apply (and the local mesh runs what a Deployment now says).

It must not hold logic of its own beyond parsing and printing.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from meshkit.cli.common import (
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    ControlOption,
    FilesOption,
    Printer,
    _call,
    _client,
    _fail,
    _texts,
    app,
)
from meshkit.cli.local_workloads import OptionalNamespace, local_workloads, reconcile

# namespaces every cluster has (Istio's tasks label them: `kubectl label ns kube-system kube-system=true`)
PRESENT_NAMESPACES = frozenset({"default", "istio-system", "kube-system", "kube-public", "kube-node-lease"})


@app.command("kube-inject")
def kube_inject(files: FilesOption = None) -> None:
    """Print the files with their Deployments' pods marked for a sidecar, like `istioctl kube-inject -f`.

    `meshkit apply -f <(meshkit kube-inject -f samples/httpbin/httpbin.yaml) -n foo` runs httpbin
    with a sidecar in a namespace that has no `istio-injection=enabled` label (the pod template gets
    the label `sidecar.istio.io/inject: "true"`).
    """
    import yaml  # noqa: PLC0415

    from meshkit.config.workloads import inject_manifests  # noqa: PLC0415

    if not files:
        _fail(EXIT_UNAVAILABLE, "error: give at least one -f FILE|DIR|-")
    documents: list[Any] = []
    for origin, text in _texts(files):
        try:
            documents += [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as error:
            _fail(EXIT_REJECTED, f"error: {origin}: not YAML: {error}")
    sys.stdout.write(yaml.safe_dump_all(inject_manifests(documents), sort_keys=False))


create_app = typer.Typer(help="Create an object from the command line, like kubectl create.",
                         no_args_is_help=True)
app.add_typer(create_app, name="create")


@create_app.command("namespace")
def create_namespace(
    name: Annotated[str, typer.Argument(help="The namespace's name.")],
    control: ControlOption = None,
) -> None:
    """Create a Namespace (label it `istio-injection=disabled` in a YAML file to keep sidecars out)."""
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    existing = _call(_client(control).get, "Namespace", None, None)["items"]
    if any(item["resource"]["metadata"]["name"] == name for item in existing):
        _fail(EXIT_REJECTED, f'error: namespaces "{name}" already exists')
    result = _call(_client(control).apply, [doc])
    Printer().line(f"namespace/{name} created (revision {result['revision']})")


create_app.command("ns", hidden=True, help="Same as `create namespace` (kubectl's short name).")(
    create_namespace)


@app.command("label")
def label(
    kind: Annotated[str, typer.Argument(help="namespace (ns): the one kind labels act on here.")],
    name: Annotated[str, typer.Argument(help="The namespace's name.")],
    labels: Annotated[list[str], typer.Argument(help="KEY=VALUE to set, KEY- to remove.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Change a label that has a value.")] = False,
    control: ControlOption = None,
) -> None:
    """Label a namespace, like `kubectl label namespace foo istio-injection=enabled`.

    The injection label decides for workloads applied afterwards (running ones keep what they have
    until a later apply reconciles them).
    """
    if kind.lower() not in ("ns", "namespace", "namespaces"):
        _fail(EXIT_REJECTED, f"error: meshkit labels namespaces only, not {kind!r}")
    client = _client(control)
    found = [item["resource"] for item in _call(client.get, "Namespace", None, None)["items"]
             if item["resource"]["metadata"]["name"] == name]
    if not found and name in PRESENT_NAMESPACES:  # a cluster always has them: the first label stores one
        found = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}]
    if not found:
        _fail(EXIT_REJECTED, f'error: namespaces "{name}" not found')
    doc = found[0]
    current = dict(doc["metadata"].get("labels") or {})
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep and key.endswith("-"):
            current.pop(key[:-1], None)
        elif not sep or not key:
            _fail(EXIT_REJECTED, f"error: {item!r}: expected KEY=VALUE or KEY-")
        elif key in current and current[key] != value and not overwrite:
            _fail(EXIT_REJECTED, f"error: '{key}' already has a value ({current[key]}), "
                                 "and --overwrite is false")
        else:
            current[key] = value
    doc = {**doc, "metadata": {**doc["metadata"], "labels": current}}
    _call(client.apply, [doc])
    Printer().line(f"namespace/{name} labeled")


@app.command()
def patch(  # noqa: PLR0917 (typer maps parameters to options)
    kind: Annotated[str, typer.Argument(help="deployment (deploy), namespace, or another stored kind.")],
    name: Annotated[str, typer.Argument(help="The object's name.")],
    patch_text: Annotated[str, typer.Option("-p", "--patch", help="The patch, JSON or YAML.")],
    namespace: OptionalNamespace = None,
    patch_type: Annotated[str, typer.Option(
        "--type", help="strategic (kubectl's default: lists of named items merge by name), merge "
                       "(RFC 7386) or json (RFC 6902 operations: add, remove, replace, move, copy, "
                       "test).")] = "strategic",
    control: ControlOption = None,
) -> None:
    """Update fields of a stored object, like `kubectl patch`.

    `meshkit patch deployment istio-ingressgateway -n istio-system -p '{"spec":{"template":{"metadata":
    {"annotations":{"proxy.istio.io/config":"{\\"gatewayTopology\\":{\\"numTrustedProxies\\":1}}"}}}}}'`
    gives the ingress gateway its own ProxyConfig (Istio's "Configuring Gateway Network Topology");
    before any was applied, the patch goes on the gateway's Deployment as istioctl install makes it.
    `--type json -p '[{"op": "test", "path": "/spec/replicas", "value": 1}, {"op": "replace", ...}]'`
    applies RFC 6902 operations all or nothing, with kubectl's error when one does not apply.
    """
    from meshkit.config.meshconfig import ROOT_NAMESPACE  # noqa: PLC0415
    from meshkit.config.patch import (  # noqa: PLC0415
        JsonPatchError,
        json_patch,
        kubectl_invalid,
        merge_patch,
        parse_json_patch,
        parse_patch,
    )
    from meshkit.config.proxyconfig import INGRESS_DEPLOYMENT, ingress_deployment  # noqa: PLC0415
    from meshkit.control.kinds import resolve_kind  # noqa: PLC0415

    if patch_type not in ("strategic", "merge", "json"):
        _fail(EXIT_REJECTED, f'error: --type must be one of [json merge strategic], not "{patch_type}"')
    from meshkit.config.messages import ConfigError  # noqa: PLC0415

    try:
        resolved = resolve_kind(kind)
    except ConfigError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    if resolved is None:
        _fail(EXIT_REJECTED, "error: patch needs a kind (not 'all')")
    namespace = "default" if resolved == "Namespace" else namespace or "default"
    try:
        changes: Any = parse_json_patch(patch_text) if patch_type == "json" else parse_patch(patch_text)
    except ValueError as error:
        _fail(EXIT_REJECTED, f"Error from server (BadRequest): {error}" if patch_type == "json"
              else f"error: -p: {error}")
    client = _client(control)
    found = [item["resource"] for item in _call(client.get, resolved, None, namespace)["items"]
             if item["resource"]["metadata"]["name"] == name]
    if found:
        current = found[0]
    elif (resolved, name, namespace) == ("Deployment", INGRESS_DEPLOYMENT, ROOT_NAMESPACE):
        current = ingress_deployment()
    else:
        _fail(EXIT_REJECTED, f'error: {resolved.lower()}s "{name}" not found in namespace {namespace}')
    if patch_type == "json":
        try:
            patched = json_patch(current, changes)
        except JsonPatchError as error:  # nothing applied: kubectl's Invalid, then the operation's cause
            _fail(EXIT_REJECTED, kubectl_invalid(error))
    else:
        patched = merge_patch(current, changes, strategic=patch_type == "strategic")
    if patched == current and found:
        Printer().line(f"{resolved.lower()}/{name} patched (no change)")
        return
    mesh = local_workloads(control, [patched])
    _call(client.apply, [patched])
    Printer().line(f"{resolved.lower()}/{name} patched")
    reconcile(mesh)
