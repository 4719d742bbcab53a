"""What a config verb does for the local mesh's workloads: run the Deployments an apply, patch or delete
changed (``meshkit apply -f bookinfo.yaml`` starts its pods), and the ``-n`` option those verbs share.

It must not parse or print anything but the pods it started or stopped, nor talk to a cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from meshkit.cli.common import EXIT_REJECTED, Printer, _cluster_target, _control_url, _fail

if TYPE_CHECKING:
    from meshkit.runtime.local import LocalMesh

OptionalNamespace = Annotated[str | None, typer.Option(
    "-n", "--namespace",
    help="Namespace for objects that name none; one naming another is an error (kubectl).")]


def local_workloads(control: str | None, documents: list[dict[str, Any]]) -> LocalMesh | None:
    """The running local mesh whose control plane this input goes to, when it holds workload objects
    (their Deployments must then run); None otherwise. Refuses what the local mesh cannot run."""
    from meshkit.runtime.launch import MeshError  # noqa: PLC0415
    from meshkit.runtime.local import LocalMesh  # noqa: PLC0415
    from meshkit.runtime.manifests import check_local, touches_workloads  # noqa: PLC0415

    if _cluster_target() is not None or not touches_workloads(documents):
        return None
    mesh = LocalMesh()
    rec = mesh.record()
    if rec is None or not rec.ready or mesh.control_url(rec) != _control_url(control):
        return None
    try:
        check_local(documents)
    except MeshError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    return mesh


def reconcile(mesh: LocalMesh | None) -> None:
    if mesh is None:
        return
    from meshkit.runtime.launch import MeshError  # noqa: PLC0415

    try:
        changes = mesh.reconcile()
    except MeshError as error:
        _fail(EXIT_REJECTED, f"error: the config was applied, but the local mesh could not run it: {error}")
    printer = Printer()
    for change in changes:
        printer.line(f"pod/{change}")
