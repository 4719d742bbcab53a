"""`meshkit workshop export-student`: solutions out, checks and hints kept, bad markers named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshkit.workshop.student import ExportError, export_student, strip_solution_lines

ROOT = Path(__file__).resolve().parents[2]


def _cell(kind: str, source: str, tags: list[str] | None = None) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "metadata": {"tags": tags} if tags else {}, "source": source}
    if kind == "code":
        output = {"output_type": "stream", "name": "stdout", "text": "42\n"}
        cell |= {"execution_count": 3, "outputs": [output]}
    return cell


def _notebook(*cells: dict[str, Any]) -> dict[str, Any]:
    return {"cells": list(cells), "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4,
            "nbformat_minor": 5}


STEP = """lab = Lab("02-canary")

def apply_split(mesh):
    # BEGIN SOLUTION
    mesh.apply(canary("reviews", {"v1": 90, "v3": 10}))
    # END SOLUTION

step = lab.step("shift-10", check=check_split, hint="Use canary() with weights that add up to 100.")
"""


def _labs(tmp_path: Path) -> Path:
    labs = tmp_path / "labs"
    (labs / "data").mkdir(parents=True)
    (labs / "data" / "rules.yaml").write_text("kind: VirtualService\n")
    (labs / ".ipynb_checkpoints").mkdir()
    (labs / ".ipynb_checkpoints" / "02-canary-checkpoint.ipynb").write_text("{}")
    notebook = _notebook(
        _cell("markdown", "# Canary\nShift 10% of traffic to v3."),
        _cell("code", STEP),
        _cell("code", "mesh.apply(canary('reviews', {'v1': 90, 'v3': 10}))\n", tags=["solution"]),
        _cell("markdown", "The answer: 90/10.", tags=["solution", "hide"]),
        _cell("code", "step.check()\nstep.hint()"),
    )
    (labs / "02-canary.ipynb").write_text(json.dumps(notebook))
    return labs


def test_student_edition_drops_solutions_and_keeps_checks_and_hints(tmp_path: Path) -> None:
    labs, out = _labs(tmp_path), tmp_path / "student"
    command = [sys.executable, "-m", "meshkit.cli", "workshop", "export-student", str(labs), str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "wrote 1 notebooks" in result.stdout
    assert "2 solution cells and 1 solution blocks removed" in result.stdout
    edition = json.loads((out / "02-canary.ipynb").read_text())
    sources = ["".join(cell["source"]) for cell in edition["cells"]]
    assert len(sources) == 3
    assert sources[0] == "# Canary\nShift 10% of traffic to v3."
    assert "BEGIN SOLUTION" not in sources[1] and "canary(\"reviews\"" not in sources[1]
    assert "    # YOUR CODE HERE\n" in sources[1]  # at the marker's indentation
    assert 'hint="Use canary() with weights' in sources[1] and "check=check_split" in sources[1]
    assert sources[2] == "step.check()\nstep.hint()"
    assert all(cell["outputs"] == [] and cell["execution_count"] is None
               for cell in edition["cells"] if cell["cell_type"] == "code")
    assert edition["metadata"] == {"kernelspec": {"name": "python3"}}
    assert (out / "data" / "rules.yaml").read_text() == "kind: VirtualService\n"
    assert not (out / ".ipynb_checkpoints").exists()
    assert "mesh.apply(canary" in (labs / "02-canary.ipynb").read_text()  # the source is untouched


@pytest.mark.parametrize(("source", "problem"), [
    ("x = 1\n# BEGIN SOLUTION\ny = 2\n", "line 2: BEGIN SOLUTION without an END SOLUTION"),
    ("# END SOLUTION\n", "line 1: END SOLUTION without a BEGIN SOLUTION"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "line 2: BEGIN SOLUTION inside the block"),
])
def test_unbalanced_markers_are_named_and_nothing_is_written(tmp_path: Path, source: str,
                                                             problem: str) -> None:
    labs, out = tmp_path / "labs", tmp_path / "out"
    labs.mkdir()
    (labs / "01-ok.ipynb").write_text(json.dumps(_notebook(_cell("code", "print('fine')"))))
    bad = _notebook(_cell("markdown", "intro"), _cell("code", source))
    (labs / "02-bad.ipynb").write_text(json.dumps(bad))
    with pytest.raises(ExportError, match=f"02-bad.ipynb cell 1 {problem}"):
        export_student(labs, out)
    assert not out.exists()


def test_markers_tolerate_case_hashes_and_indentation() -> None:
    text, blocks = strip_solution_lines("a\n  ### begin solution\n  b\n  ### End Solution\nc", "nb cell 0")
    assert (text, blocks) == ("a\n  # YOUR CODE HERE\nc", 1)
    with pytest.raises(ExportError, match="inside it"):
        export_student(Path(__file__).parent, Path(__file__).parent / "out")
