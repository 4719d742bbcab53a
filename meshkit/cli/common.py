"""What every verb of the ``meshkit`` command shares: the Typer app, output, finding the control plane.

Thin on purpose: each verb parses its options, calls into `meshkit.control` (client, server) or
`meshkit.config` (offline analysis), and prints. Heavy modules are imported inside the verbs so
``meshkit --help`` stays fast. The control plane is found via ``--control URL``, then
``$MESHKIT_CONTROL``, then the address a running control plane recorded in the state dir
(``$MESHKIT_HOME``), then ``http://127.0.0.1:15010``. With the global ``--context`` (or
``$MESHKIT_CONTEXT``) naming a cluster — ``kind``, ``kind:<cluster>``, ``k8s``, ``k8s:<context>`` —
the verbs use `meshkit.k8s.cluster_config.ClusterClient` instead: the same calls, config
through the Kubernetes API, reads from the control plane through the API server's service proxy.

Exit codes: 0 success, 1 rejected/invalid input or analyzer errors, 2 usage or no control plane.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from meshkit.config.messages import format_message

if TYPE_CHECKING:
    from collections.abc import Mapping

    from meshkit.config.locations import Location
    from meshkit.control.client import ControlClient

DEFAULT_CONTROL = "http://127.0.0.1:15010"
EXIT_REJECTED = 1
EXIT_UNAVAILABLE = 2
# `meshkit analyze`, as istioctl analyze: the input could not be read (istioctl's ExitDataError), and
# the analysis found errors (ExitAnalyzerFoundIssues); warnings and notes exit 0
EXIT_INPUT_UNREADABLE = 65
EXIT_ANALYSIS_ERRORS = 79

app = typer.Typer(
    name="meshkit",
    help="A hands-on service mesh: Istio YAML, a real control plane and real sidecars on 127.0.0.1.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

ControlOption = Annotated[str | None, typer.Option(
    "--control", envvar="MESHKIT_CONTROL", show_envvar=True,
    help="Control plane URL (default: the one recorded in $MESHKIT_HOME, else http://127.0.0.1:15010).")]
ContextOption = Annotated[str | None, typer.Option(
    "--context", envvar="MESHKIT_CONTEXT", show_envvar=True,
    help="Work against a cluster instead of a local control plane: kind (kind-meshkit), kind:CLUSTER, "
         "k8s (the current kubeconfig context) or k8s:CONTEXT. apply/get/delete/analyze go through the "
         "Kubernetes API; proxy-status, history and top through the API server's service proxy.")]
FilesOption = Annotated[list[str] | None, typer.Option(
    "-f", "--filename", help="A YAML/JSON file, a directory of them, or - for stdin. Repeatable.")]
NamespaceOption = Annotated[str, typer.Option("-n", "--namespace", help="Namespace.")]


# -- output -----------------------------------------------------------------------------------------


class Printer:
    """stdout for results, stderr for problems; colours only when rich is asked to (lazy import)."""

    def __init__(self) -> None:
        from rich.console import Console  # noqa: PLC0415 (lazy: keep --help fast)

        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def line(self, text: str) -> None:
        from rich.text import Text  # noqa: PLC0415

        self.out.print(Text(text))

    def problem(self, text: str) -> None:
        from rich.text import Text  # noqa: PLC0415

        self.err.print(Text(text, style="bold red"))

    def message(self, message: dict[str, str], *, to_stderr: bool = False) -> None:
        from rich.text import Text  # noqa: PLC0415

        style = {"Error": "red", "Warning": "yellow"}.get(message.get("severity", "Error"), "")
        (self.err if to_stderr else self.out).print(Text(format_message(message), style=style))


def age(timestamp: float | None, now: float | None = None) -> str:
    """kubectl's AGE: 42s, 5m, 3h, 2d."""
    if timestamp is None:
        return "<unknown>"
    seconds = max(0, int((now if now is not None else time.time()) - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns separated by three spaces, like kubectl."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]


# -- plumbing ---------------------------------------------------------------------------------------


def _control_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    from meshkit.control.address import read_recorded_address  # noqa: PLC0415

    recorded = read_recorded_address()
    if recorded:
        return recorded
    from meshkit.control.address import default_home  # noqa: PLC0415

    try:  # a mesh started by `meshkit up` may record its control plane in mesh.json
        mesh = json.loads((default_home() / "mesh.json").read_text())
    except (OSError, ValueError):
        mesh = None
    if isinstance(mesh, dict):
        for key in ("control_url", "control"):
            if isinstance(mesh.get(key), str):
                return str(mesh[key])
    return DEFAULT_CONTROL


@app.callback()
def global_options(context: ContextOption = None) -> None:
    """A hands-on service mesh: Istio YAML, a real control plane and real sidecars on 127.0.0.1."""


def _cluster_target() -> str | None:
    """The cluster named by the global ``--context`` / ``$MESHKIT_CONTEXT`` of this invocation."""
    try:  # typer vendors its own click (typer._click) since 0.2x; older versions use click itself
        from typer._click.globals import get_current_context  # noqa: PLC0415
    except ImportError:
        from click import get_current_context  # type: ignore[no-redef]  # noqa: PLC0415

    current = get_current_context(silent=True)
    value = current.find_root().params.get("context") if current is not None else None
    return str(value) if value else None


def _client(control: str | None) -> ControlClient:
    from meshkit.control.client import ControlClient  # noqa: PLC0415

    target = _cluster_target()
    if target is not None:
        from meshkit.k8s.targets import ClusterTargetError, cluster_client  # noqa: PLC0415

        try:
            return cluster_client(target)
        except ClusterTargetError as error:
            _fail(EXIT_UNAVAILABLE, f"error: --context {target}: {error}")
    return ControlClient(_control_url(control))


def _fail(code: int, text: str, messages: list[dict[str, str]] | None = None) -> NoReturn:
    printer = Printer()
    printer.problem(text)
    for message in messages or []:
        printer.message(message, to_stderr=True)
    raise typer.Exit(code)


def _call(function: Any, *args: Any, locations: Mapping[str, Location] | None = None, **kwargs: Any) -> Any:
    """Run one API call; print the control plane's refusal or absence and exit.

    ``locations`` (`_load`'s) puts the file and line of each resource on the refusal's messages."""
    from meshkit.config.locations import locate  # noqa: PLC0415
    from meshkit.control.client import ApiError, ControlUnreachable  # noqa: PLC0415

    try:
        return function(*args, **kwargs)
    except ControlUnreachable as error:
        if _cluster_target() is not None:
            _fail(EXIT_UNAVAILABLE, f"error: {error.reason} (at {error.url})")
        _fail(EXIT_UNAVAILABLE, f"error: no meshkit control plane is running at {error.url} "
              f"({error.reason}). Start one with `meshkit control`, "
              "or point --control / $MESHKIT_CONTROL at it.")
    except ApiError as error:
        summary = error.error if not error.messages else \
            f"the control plane rejected the request (HTTP {error.status}):"
        _fail(EXIT_REJECTED, f"error: {summary}", locate(error.messages or [], locations or {}))


def _texts(files: list[str]) -> list[tuple[str, str]]:
    """(origin, text) of every file, directory entry (*.yaml, *.yml, *.json) and ``-`` (stdin)."""
    from meshkit.config.loader import FILE_SUFFIXES  # noqa: PLC0415

    texts = []
    for name in files:
        path = Path(name)
        if name == "-":
            texts.append(("<stdin>", sys.stdin.read()))
        elif not path.exists():
            _fail(EXIT_REJECTED, f"error: {name}: no such file or directory")
        elif path.is_dir():
            texts += [(str(p), p.read_text(encoding="utf-8")) for p in sorted(path.iterdir())
                      if p.is_file() and p.suffix in FILE_SUFFIXES]
        else:
            texts.append((name, path.read_text(encoding="utf-8")))
    return texts


def _load(files: list[str], namespace: str | None = None,
          locations: dict[str, Location] | None = None) -> list[dict[str, Any]]:
    """Resources of every file (``-`` = stdin) as Istio dicts; loader errors are printed and exit 1.

    ``namespace`` is kubectl's ``-n`` (`with_namespace`), applied to the documents as written.
    ``locations``, when given, receives where each resource starts (`meshkit.config.locations`).
    """
    import yaml  # noqa: PLC0415

    from meshkit.config.loader import load_resources  # noqa: PLC0415
    from meshkit.config.locations import index_locations, locate  # noqa: PLC0415
    from meshkit.config.messages import ConfigError, Message  # noqa: PLC0415

    resources = []
    ignored: list[Message] = []  # Kubernetes kinds the local mesh does not model: a warning each
    where: dict[str, Location] = {} if locations is None else locations
    try:
        for origin, text in _texts(files):
            for ref, place in index_locations(text, origin).items():
                where.setdefault(ref, place)
            found = load_resources(text, origin=origin, warnings=ignored)  # every problem, with its line
            if namespace is not None and found:
                written = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
                written = [i for d in written
                           for i in (d.get("items") or [] if d.get("kind") == "List" else [d])]
                found = load_resources(with_namespace(written, namespace), origin=origin)
            resources.extend(found)
    except (OSError, UnicodeDecodeError) as error:
        _fail(EXIT_REJECTED, f"error: cannot read the input: {error}")
    except ConfigError as error:
        _fail(EXIT_REJECTED, "error: the input is not valid",
              locate([m.to_dict() for m in error.messages], where))
    printer = Printer() if ignored else None
    for message in ignored:
        if printer is not None:
            printer.message(message.to_dict(), to_stderr=True)
    return [resource.to_dict() for resource in resources]


def with_namespace(documents: list[dict[str, Any]], namespace: str | None) -> list[dict[str, Any]]:
    """kubectl's ``-n``: objects without a namespace get it; one whose own namespace differs is an error
    (exit 1, nothing sent). Namespaces themselves are cluster-scoped."""
    if namespace is None:
        return documents
    out = []
    for doc in documents:
        meta = dict(doc.get("metadata") or {})
        if doc.get("kind") != "Namespace":
            own = meta.get("namespace")
            if own and own != namespace:
                _fail(EXIT_REJECTED, f"error: {doc.get('kind')}/{own}/{meta.get('name')} metadata.namespace: "
                      f'the namespace from the provided object "{own}" does not match the namespace '
                      f'"{namespace}". '
                      f"You must pass '--namespace={own}' to perform this operation.")
            meta["namespace"] = namespace
        out.append({**doc, "metadata": meta})
    return out


def _print_changes(result: dict[str, Any], locations: Mapping[str, Location] | None = None) -> None:
    from meshkit.config.locations import locate  # noqa: PLC0415

    printer = Printer()
    for item in result.get("results", []):
        printer.line(f"{item['resource']} {item['action']}")
    for message in locate(result.get("warnings", []), locations or {}):
        printer.message(message)
