"""The ``%%mesh`` cell magic: Istio YAML typed into a notebook cell, analyzed and applied.

``%%mesh apply`` shows the analyzer's messages for the cell's YAML, then applies it (a refused
change shows the field in HTML and stops Run All, as `Mesh.apply` does); ``%%mesh analyze`` only
shows the messages. A cell with nothing but comments is a learner's empty exercise: it says so
and changes nothing. The mesh is the notebook's ``mesh`` variable (else `connect()`).
`Lab` registers the magic in a notebook's kernel; ``%load_ext meshkit.lab.magic`` does it by hand.
It must not hold state of its own.
"""

from __future__ import annotations

from typing import Any

from meshkit.lab.display import LabError, Plain
from meshkit.lab.mesh import Mesh, connect

__all__ = ["load_ipython_extension", "mesh_cell", "register"]

ACTIONS = ("apply", "analyze")
EMPTY = "Nothing to apply yet: write the YAML of the resource below the %%mesh line, then run the cell."


def _blank(text: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


def mesh_cell(line: str, cell: str, namespace: dict[str, Any] | None = None) -> list[Any]:
    """What ``%%mesh LINE`` shows for ``cell``: the analyzer's findings, then the apply result."""
    action = line.strip() or "apply"
    if action not in ACTIONS:
        raise LabError(f"%%mesh {action}: expected one of {', '.join(ACTIONS)} (e.g. %%mesh apply)")
    if _blank(cell):
        return [Plain(EMPTY)]
    found = (namespace or {}).get("mesh")
    mesh = found if isinstance(found, Mesh) else connect()
    findings = mesh.analyze(cell)
    if action == "analyze":
        return [findings]
    return [findings, mesh.apply(cell)]


def register(shell: Any) -> None:
    """Register ``%%mesh`` in the IPython ``shell`` (idempotent)."""
    if "mesh" in shell.magics_manager.magics.get("cell", {}):
        return

    def magic(line: str, cell: str) -> None:
        from IPython.display import display  # noqa: PLC0415

        for shown in mesh_cell(line, cell, shell.user_ns):
            display(shown)

    shell.register_magic_function(magic, magic_kind="cell", magic_name="mesh")


def load_ipython_extension(shell: Any) -> None:
    register(shell)
