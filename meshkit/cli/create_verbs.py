"""kubectl's ``create secret tls|generic`` and ``create configmap``: objects made from files on disk.

``meshkit create secret tls NAME --key FILE --cert FILE``, ``meshkit create secret generic NAME
--from-file=[KEY=]PATH --from-literal=KEY=VALUE`` and ``meshkit create configmap NAME
--from-file=[KEY=]PATH`` build the object kubectl builds (a Secret's values base64, ``type``
``kubernetes.io/tls`` or ``Opaque``; a directory given to ``--from-file`` adds each of its files) and
apply it, so the control plane validates it as any apply. ``-n`` goes before or after the object
kind or between ``secret`` and its type, as with kubectl (``meshkit create -n mesh-external secret tls
...``, ``meshkit create secret -n istio-system generic ...``). An object that already
exists is an error, as ``kubectl create``.

It must not hold logic of its own beyond parsing and printing.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import typer

from meshkit.cli.common import EXIT_REJECTED, ControlOption, Printer, _call, _client, _fail
from meshkit.cli.object_verbs import create_app

secret_app = typer.Typer(help="Create a Secret: tls (a certificate and its key) or generic (files).",
                         no_args_is_help=True)
create_app.add_typer(secret_app, name="secret")

NsOption = Annotated[str | None, typer.Option("-n", "--namespace", help="Namespace (default: default).")]
FromFile = Annotated[list[str] | None, typer.Option(
    "--from-file", help="[KEY=]PATH: a file (KEY defaults to its name) or every file of a directory.")]
FromLiteral = Annotated[list[str] | None, typer.Option("--from-literal", help="KEY=VALUE.")]


@create_app.callback()
def _create(ctx: typer.Context, namespace: NsOption = None) -> None:
    """Create an object from the command line, like kubectl create."""
    ctx.obj = {"namespace": namespace}


@secret_app.callback()
def _secret(ctx: typer.Context, namespace: NsOption = None) -> None:
    """``-n`` between ``secret`` and its type too (``kubectl create secret -n istio-system generic ...``)."""
    if namespace:
        ctx.obj = {**(ctx.obj if isinstance(ctx.obj, dict) else {}), "namespace": namespace}


def _namespace(ctx: typer.Context, namespace: str | None) -> str:
    """The command's own ``-n``, else the one given before the object kind, else ``default``."""
    given = ctx.obj.get("namespace") if isinstance(ctx.obj, dict) else None
    return namespace or given or "default"


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        _fail(EXIT_REJECTED, f"error: {option} {path}: {error.strerror or error}")


def _files(sources: list[str] | None, literals: list[str] | None) -> dict[str, bytes]:
    """kubectl's --from-file and --from-literal: key -> content."""
    found: dict[str, bytes] = {}
    for source in sources or []:
        key, eq, path = source.partition("=")
        if not eq:
            key, path = "", source
        if not key and Path(path).is_dir():
            for item in sorted(p for p in Path(path).iterdir() if p.is_file()):
                found[item.name] = _read(str(item), "--from-file")
            continue
        found[key or Path(path).name] = _read(path, "--from-file")
    for literal in literals or []:
        key, eq, value = literal.partition("=")
        if not eq or not key:
            _fail(EXIT_REJECTED, f"error: --from-literal {literal!r}: expected KEY=VALUE")
        found[key] = value.encode()
    return found


def _create_object(kind: str, name: str, namespace: str, body: dict[str, Any], control: str | None) -> None:
    client = _client(control)
    existing = _call(client.get, kind, None, None)["items"]
    if any(item["resource"]["metadata"]["name"] == name
           and item["resource"]["metadata"].get("namespace", "default") == namespace for item in existing):
        _fail(EXIT_REJECTED,
              f'error: failed to create {kind.lower()}: {kind.lower()}s "{name}" already exists')
    doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": namespace}, **body}
    _call(client.apply, [doc])
    Printer().line(f"{kind.lower()}/{name} created")


def _b64(values: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in values.items()}


@secret_app.command("tls")
def create_secret_tls(  # noqa: PLR0917 (typer maps parameters to options)
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The Secret's name.")],
    key: Annotated[str, typer.Option("--key", help="The private key file (PEM).")],
    cert: Annotated[str, typer.Option("--cert", help="The certificate (chain) file (PEM).")],
    namespace: NsOption = None,
    control: ControlOption = None,
) -> None:
    """A Secret of type kubernetes.io/tls with tls.crt and tls.key (a Gateway's credentialName)."""
    data = {"tls.crt": _read(cert, "--cert"), "tls.key": _read(key, "--key")}
    _create_object("Secret", name, _namespace(ctx, namespace),
                   {"type": "kubernetes.io/tls", "data": _b64(data)}, control)


@secret_app.command("generic")
def create_secret_generic(  # noqa: PLR0917 (typer maps parameters to options)
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The Secret's name.")],
    from_file: FromFile = None,
    from_literal: FromLiteral = None,
    namespace: NsOption = None,
    control: ControlOption = None,
) -> None:
    """An Opaque Secret from files and literals (a DestinationRule's credentialName, a pod's volume)."""
    data = _files(from_file, from_literal)
    _create_object("Secret", name, _namespace(ctx, namespace), {"type": "Opaque", "data": _b64(data)},
                   control)


@create_app.command("configmap")
def create_configmap(  # noqa: PLR0917 (typer maps parameters to options)
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The ConfigMap's name.")],
    from_file: FromFile = None,
    from_literal: FromLiteral = None,
    namespace: NsOption = None,
    control: ControlOption = None,
) -> None:
    """A ConfigMap from files and literals (a pod's volume: nginx's nginx.conf)."""
    data = _files(from_file, from_literal)
    text, binary = {}, {}
    for key, value in data.items():
        try:
            text[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(value).decode()
    body: dict[str, Any] = {"data": text}
    if binary:
        body["binaryData"] = binary
    _create_object("ConfigMap", name, _namespace(ctx, namespace), body, control)


create_app.command("cm", hidden=True, help="Same as `create configmap` (kubectl's short name).")(
    create_configmap)
