"""The student edition of the labs: ``meshkit workshop export-student labs/ OUT/``.

Markers (the lab author's side; see docs/instructor-guide.md):

- a cell whose metadata ``tags`` contain ``solution`` is removed entirely (code or markdown);
- in a code cell, the lines from ``# BEGIN SOLUTION`` to ``# END SOLUTION`` (any number of ``#``,
  any indentation, case-insensitive) are replaced by one ``# YOUR CODE HERE`` line at the marker's
  indentation; everything else in the cell — checks, hints, set-up — stays.

- a notebook of meshkit's lab catalog gets its learner edition: every exercise cell back to its
  placeholder (``transform``: the CLI passes `meshkit.lab.editions.learner_cells`, as this package
  sits below `meshkit.lab` and must not import it).

Outputs and execution counts are cleared in every cell. Files that are not notebooks are copied as
they are; ``.ipynb_checkpoints`` are skipped. A BEGIN without END (or the reverse) is an error
naming the notebook, the cell and the line, and nothing is written for that notebook.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOLUTION_TAG = "solution"
PLACEHOLDER = "# YOUR CODE HERE"
_BEGIN = re.compile(r"^(\s*)#+\s*BEGIN SOLUTION\b", re.IGNORECASE)
_END = re.compile(r"^\s*#+\s*END SOLUTION\b", re.IGNORECASE)


class ExportError(ValueError):
    """A notebook that cannot be turned into a student edition (the message names where)."""


@dataclass
class ExportReport:
    notebooks: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    removed_cells: int = 0
    removed_blocks: int = 0
    emptied_exercises: int = 0


Transform = Callable[[dict[str, Any], str], tuple[dict[str, Any], int]]


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def strip_solution_lines(source: str, where: str) -> tuple[str, int]:
    """``source`` without its BEGIN/END SOLUTION blocks, and how many blocks went."""
    kept: list[str] = []
    blocks = 0
    begin_line: int | None = None
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        begin = _BEGIN.match(line)
        if begin_line is None:
            if begin:
                begin_line = number
                kept.append(begin.group(1) + PLACEHOLDER + "\n")
            elif _END.match(line):
                raise ExportError(f"{where} line {number}: END SOLUTION without a BEGIN SOLUTION before it")
            else:
                kept.append(line)
        elif begin:
            raise ExportError(f"{where} line {number}: BEGIN SOLUTION inside the block opened at line "
                              f"{begin_line}")
        elif _END.match(line):
            begin_line = None
            blocks += 1
    if begin_line is not None:
        raise ExportError(f"{where} line {begin_line}: BEGIN SOLUTION without an END SOLUTION")
    text = "".join(kept)
    return (text.rstrip("\n") if not source.endswith("\n") else text), blocks


def student_notebook(notebook: dict[str, Any], name: str) -> tuple[dict[str, Any], int, int]:
    """The student edition of one notebook, with the number of cells and blocks removed."""
    cells = notebook.get("cells")
    if not isinstance(cells, list):
        raise ExportError(f"{name}: not a Jupyter notebook (no 'cells' list)")
    kept: list[dict[str, Any]] = []
    removed_cells = removed_blocks = 0
    for index, original in enumerate(cells):
        if not isinstance(original, dict):
            raise ExportError(f"{name} cell {index}: expected an object")
        tags = original.get("metadata", {}).get("tags", [])
        if isinstance(tags, list) and SOLUTION_TAG in tags:
            removed_cells += 1
            continue
        cell = dict(original)
        if cell.get("cell_type") == "code":
            source, blocks = strip_solution_lines(_source(cell), f"{name} cell {index}")
            removed_blocks += blocks
            cell["source"] = source.splitlines(keepends=True)
            cell["outputs"] = []
            cell["execution_count"] = None
        kept.append(cell)
    return {**notebook, "cells": kept}, removed_cells, removed_blocks


def export_student(source_dir: Path | str, out_dir: Path | str,
                   transform: Transform | None = None) -> ExportReport:
    """Write the student edition of every notebook under ``source_dir`` into ``out_dir``;
    ``transform(notebook, name)`` then returns the edition and how many exercise cells it emptied."""
    source, out = Path(source_dir), Path(out_dir)
    if not source.is_dir():
        raise ExportError(f"{source}: not a directory of labs")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ExportError(f"{out}: the output must not be the labs directory or inside it")
    report = ExportReport()
    editions: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if ".ipynb_checkpoints" in relative.parts or not path.is_file():
            continue
        if path.suffix == ".ipynb":
            try:
                notebook = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as error:
                raise ExportError(f"{relative}: not valid JSON ({error})") from None
            if not isinstance(notebook, dict):
                raise ExportError(f"{relative}: not a Jupyter notebook")
            edition, cells, blocks = student_notebook(notebook, str(relative))
            if transform is not None:
                edition, emptied = transform(edition, str(relative))
                report.emptied_exercises += emptied
            editions.append((relative, edition))
            report.removed_cells += cells
            report.removed_blocks += blocks
        else:
            editions.append((relative, {}))
    for relative, edition in editions:  # every notebook checked before anything is written
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative.suffix == ".ipynb":
            target.write_text(json.dumps(edition, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            report.notebooks.append(str(relative))
        else:
            shutil.copy2(source / relative, target)
            report.copied.append(str(relative))
    return report
