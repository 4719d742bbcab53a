"""Every lab notebook runs top to bottom under nbclient against a real mesh, and its checks are real.

Two passes per lab, in one kernel: the notebook without its action and traffic cells, after which
every step that has an action cell is recorded as failing with a reason; then the whole notebook
with MESHKIT_LAB_STRICT=1 (a failing check raises, so the run fails), after which every step is
recorded as passed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

from tests.labs.conftest import LABS

NOTEBOOKS = sorted(LABS.glob("[0-9][0-9]-*.ipynb"))
CELL_TIMEOUT = 60


def _progress(env: dict[str, str], lab: str) -> dict[str, dict[str, object]]:
    data = json.loads((Path(env["MESHKIT_HOME"]) / "lab" / "progress.json").read_text())
    return dict(data.get(lab, {}))


def _action_steps(path: Path) -> set[str]:
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["meshkit"]["action"] for c in nb.cells if "action" in c.metadata.get("meshkit", {})}


def test_there_are_labs() -> None:
    assert [p.name[:2] for p in NOTEBOOKS][:3] == ["00", "01", "02"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lab_is_committed_clean_and_complete(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for needed in ("**Time:**", "**Difficulty:**", "## Recap", "## Challenge"):
        assert needed in text, f"{path.name} lacks {needed}"
    assert _action_steps(path), f"{path.name} has no cell tagged as a step's action"
    sources = "\n".join(c.source for c in code)
    assert "meshkit.lab" in sources and "import meshkit.runtime" not in sources


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_checks_fail_before_their_steps_then_the_lab_passes_top_to_bottom(
        path: Path, lab_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One kernel per lab (a kernel start and plotly's import cost seconds): first the notebook
    without its action and traffic cells, lenient; then, strict, the whole notebook from the top."""
    monkeypatch.setenv("MESHKIT_LAB_STRICT", "0")
    monkeypatch.setenv("MESHKIT_LAB_RETRY_FOR", "0")
    nb = nbformat.read(path, as_version=4)
    lenient = nbformat.read(path, as_version=4)
    lenient.cells = [c for c in lenient.cells if not set(c.metadata.get("tags", [])) & {"action", "load"}]
    # nbclient writes each executed cell back into client.nb.cells[index]: one notebook per pass
    client = NotebookClient(lenient, kernel_name="python3", timeout=CELL_TIMEOUT, startup_timeout=60,
                            resources={"metadata": {"path": str(LABS)}})
    with client.setup_kernel():
        began = time.time()
        for index, cell in enumerate(lenient.cells):
            client.execute_cell(cell, index)
        progress = _progress(lab_env, path.stem)
        for step in _action_steps(path):
            entry = progress.get(step)
            assert entry is not None, f"{path.stem}: step {step} was never checked"
            assert entry["at"] >= began
            assert entry["passed"] is False, f"{path.stem}: step {step} passed without its action"
            assert str(entry["reason"]).strip(), f"{path.stem}: step {step} failed without saying why"

        strict = new_code_cell("import os\n"
                               "os.environ.update(MESHKIT_LAB_STRICT='1', MESHKIT_LAB_RETRY_FOR='4')")
        client.execute_cell(strict, 0)
        client.nb = nb
        began = time.time()
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)  # a failing check raises here (strict)
    progress = _progress(lab_env, path.stem)
    assert progress, f"{path.stem} recorded no checks"
    for step, entry in progress.items():
        assert entry["passed"] is True and entry["at"] >= began, f"{path.stem}: {step}: {entry}"
    assert _action_steps(path) <= set(progress)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    widget_views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_views, f"{path.stem} shows no widget (progress, chart or slider)"
    assert os.environ["MESHKIT_HOME"] == lab_env["MESHKIT_HOME"]


def test_a_refused_apply_shows_the_field_in_html_not_a_traceback_and_stops_the_run(
        lab_env: dict[str, str]) -> None:
    cells = [new_code_cell("from meshkit.lab import connect, rules\nmesh = connect()"),
             new_code_cell('mesh.apply(rules.route("reviews", to="v9"))'),
             new_code_cell('print("ran on")')]
    nb = new_notebook(cells=cells)
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, startup_timeout=60).execute()
    outputs = nb.cells[1].outputs
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "spec.http[0].route[0].destination.subset" in html and "VirtualService/default/reviews" in html
    assert not any("Traceback" in "".join(o.get("traceback", [])) for o in outputs)
    assert not nb.cells[2].outputs  # Run All stops at the refused change


def test_instructor_fast_forwards_lab_02_in_a_real_kernel(lab_env: dict[str, str]) -> None:
    """The instructor starts the canary demo at its last step: the earlier solutions run in the
    notebook's own namespace and their checks pass against the mesh."""
    path = LABS / "02-canary.ipynb"
    setup = nbformat.read(path, as_version=4).cells
    first_code = next(c for c in setup if c.cell_type == "code")
    cells = [new_code_cell("import os\nos.environ.update(MESHKIT_LAB_STRICT='0', MESHKIT_LAB_RETRY_FOR='4')"),
             new_code_cell(first_code.source),
             new_code_cell("from meshkit.lab import instructor\ninstructor()\n"
                           "done = lab.fast_forward('promote')\nprint([(r.step, r.passed) for r in done])")]
    nb = new_notebook(cells=cells)
    began = time.time()
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, startup_timeout=60,
                   resources={"metadata": {"path": str(LABS)}}).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "[('canary-10', True), ('canary-50', True)]" in printed, nb.cells[2].outputs
    progress = _progress(lab_env, "02-canary")
    for step in ("canary-10", "canary-50"):
        assert progress[step]["passed"] is True and progress[step]["at"] >= began
