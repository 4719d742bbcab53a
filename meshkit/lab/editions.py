"""The two editions of a lab notebook, from one source: the learner edition and the reference edition.

The learner edition (``labs/*.ipynb``, committed) has one *exercise cell* per step that asks the
learner to act: its metadata is ``{"meshkit": {"exercise": STEP}, "tags": ["exercise"]}`` and its
source a placeholder (what to do, where the hint is) generated from `meshkit.lab.catalog`. The
reference edition is the same notebook with every exercise cell holding the step's solution from
the catalog — generated, never kept by hand::

    python -m meshkit.lab.editions reference labs/03-mirroring.ipynb -o build/reference/
    python -m meshkit.lab.editions learner labs/*.ipynb -o labs/        # re-generate placeholders
    python -m meshkit.lab.editions check labs/*.ipynb                   # exit 1 if out of date

Both editions come out with no outputs and no execution counts. A notebook whose exercise cells
do not match its lab's steps (unknown step, a step twice, an exercised step without a cell) is an
`EditionError` naming the notebook and the cell. This module reads and writes notebooks only; it
must not run them nor touch a mesh.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import nbformat

from meshkit.lab import catalog

__all__ = [
    "EditionError", "exercise_cells", "lab_of", "learner", "learner_cells", "main", "placeholder",
    "reference", "write",
]

Edition = Literal["learner", "reference"]
EXERCISE_TAG = "exercise"


class EditionError(ValueError):
    """A notebook whose exercise cells do not match its lab in the catalog (the message says where)."""


def lab_of(nb: Any, path: Path | None = None) -> catalog.LabSpec:
    """The catalog lab of notebook ``nb`` (``metadata.meshkit.lab``, else the file's stem)."""
    name = nb.metadata.get("meshkit", {}).get("lab") or (path.stem if path else "")
    spec = catalog.get(name)
    if spec is None:
        raise EditionError(f"{path or 'notebook'}: no lab {name!r} in meshkit.lab.catalog "
                           f"(labs: {', '.join(catalog.names())})")
    return spec


def exercise_cells(nb: Any, spec: catalog.LabSpec, where: str = "notebook") -> dict[str, int]:
    """Step id -> index of its exercise cell; every step that asks for an exercise has exactly one."""
    found: dict[str, int] = {}
    known = {s.id for s in spec.steps}
    for index, cell in enumerate(nb.cells):
        step = cell.metadata.get("meshkit", {}).get("exercise")
        if step is None:
            continue
        if cell.cell_type != "code":
            raise EditionError(f"{where} cell {index}: an exercise cell must be a code cell")
        if step not in known:
            raise EditionError(f"{where} cell {index}: exercise for step {step!r}, which lab {spec.name!r} "
                               f"does not have (steps: {', '.join(sorted(known))})")
        if step in found:
            raise EditionError(f"{where} cell {index}: a second exercise cell for step {step!r} "
                               f"(the first is cell {found[step]})")
        found[step] = index
    missing = [s.id for s in spec.steps if s.exercise != "none" and s.id not in found]
    if missing:
        raise EditionError(f"{where}: no exercise cell for step(s) {', '.join(missing)} of lab {spec.name!r}")
    return found


def placeholder(step: catalog.StepSpec) -> str:
    """The learner edition's exercise cell: what to do, and where help is; never the solution."""
    about = [f"# Exercise — {step.title}", *(f"# {line}" for line in _wrap(step.task)),
             f'# Stuck? lab.hint("{step.id}")' + ("" if step.exercise == "predict" else
                                                    f' · then check with lab.check("{step.id}")')]
    if step.exercise == "yaml":
        return "%%mesh apply\n" + "\n".join(about) + "\n# Write the YAML below, then run this cell.\n"
    if step.exercise == "predict":
        labels = ", ".join(f'"{c.split(")", 1)[0]}"' for c in step.choices)
        return (f'lab.predict("{step.id}")   # shows the question\n'
                f'# Answer before you look: lab.predict("{step.id}", <one of {labels}>)\n')
    if step.exercise == "cli":
        return "\n".join(about) + "\n# Run the command in a terminal (File → New → Terminal).\n"
    return "\n".join(about) + "\n"


def _wrap(text: str, width: int = 96) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return [*lines, current] if current else lines


def _edition(nb: Any, spec: catalog.LabSpec, which: Edition, where: str) -> Any:
    out = copy.deepcopy(nb)
    cells = exercise_cells(out, spec, where)
    for step_id, index in cells.items():
        step = spec.step(step_id)
        source = step.solution if which == "reference" else placeholder(step)
        out.cells[index].source = source.rstrip("\n")
        tags = list(out.cells[index].metadata.get("tags", []))
        if EXERCISE_TAG not in tags:
            out.cells[index].metadata["tags"] = [*tags, EXERCISE_TAG]
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    out.metadata.setdefault("meshkit", {})["edition"] = which
    return out


def learner(nb: Any, path: Path | None = None) -> Any:
    """The learner edition: every exercise cell a placeholder."""
    return _edition(nb, lab_of(nb, path), "learner", str(path or "notebook"))


def reference(nb: Any, path: Path | None = None) -> Any:
    """The reference edition: every exercise cell holds its step's solution from the catalog."""
    return _edition(nb, lab_of(nb, path), "reference", str(path or "notebook"))


def learner_cells(notebook: dict[str, Any], name: str) -> tuple[dict[str, Any], int]:
    """`meshkit workshop export-student`'s transform: the learner edition of a catalog lab (others
    unchanged), and how many exercise cells held something other than their placeholder."""
    nb = nbformat.from_dict(notebook)
    exercised = any("exercise" in c.get("metadata", {}).get("meshkit", {}) for c in nb.cells)
    if not exercised and not nb.metadata.get("meshkit", {}).get("lab"):
        return notebook, 0  # not a notebook with exercises: nothing to empty
    made = learner(nb, Path(name))
    emptied = sum(1 for old, new in zip(nb.cells, made.cells, strict=True)
                  if "exercise" in new.metadata.get("meshkit", {}) and old.source != new.source)
    return dict(json.loads(nbformat.writes(made))), emptied


def write(which: Edition, source: Path, out: Path) -> Path:
    """Write the ``which`` edition of notebook ``source`` to ``out`` (a file, or a directory)."""
    nb = nbformat.read(source, as_version=4)
    made = reference(nb, source) if which == "reference" else learner(nb, source)
    target = out / source.name if out.is_dir() or not out.suffix else out
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(made, target)
    return target


def _stale(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return nbformat.writes(learner(nb, path)) != nbformat.writes(nb)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m "
                                          "meshkit.lab.editions", description=__doc__.split("\n\n")[0])
    parser.add_argument("edition", choices=("learner", "reference", "check"))
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("-o", "--out", type=Path, help="output file or directory (not for check)")
    args = parser.parse_args(argv)
    try:
        if args.edition == "check":
            stale = [str(p) for p in args.notebooks if _stale(p)]
            for path in stale:
                print(f"{path}: not the learner edition (run: python -m meshkit.lab.editions learner {path} "
                      f"-o {path})", file=sys.stderr)
            return 1 if stale else 0
        if args.out is None:
            parser.error("-o/--out is required")
        if len(args.notebooks) > 1 and args.out.suffix:
            parser.error("with several notebooks, -o must be a directory")
        for path in args.notebooks:
            print(write(args.edition, path, args.out))
    except EditionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
