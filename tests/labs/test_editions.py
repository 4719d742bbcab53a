"""The learner and reference editions come from one source (notebook + catalog), and the pieces a
learner's progress rests on are honest: no solution in the learner's notebook, a step that passed
and fails later shows as regressed, shares are judged by a statistical test. No mesh needed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from meshkit.lab import catalog, checks, editions, magic
from meshkit.lab.progress import ProgressStore
from meshkit.runtime.state import StateDir
from tests.labs.conftest import LABS

ROOT = LABS.parent
MIRRORING = LABS / "03-mirroring.ipynb"


def test_reference_edition_fills_every_exercise_with_its_catalog_solution() -> None:
    spec = catalog.get("03-mirroring")
    assert spec is not None
    learner = nbformat.read(MIRRORING, as_version=4)
    reference = editions.reference(learner, MIRRORING)
    cells = editions.exercise_cells(reference, spec)
    assert set(cells) == {s.id for s in spec.steps if s.exercise != "none"}
    for step_id, index in cells.items():
        assert reference.cells[index].source == spec.step(step_id).solution.rstrip("\n")
        assert learner.cells[index].source == editions.placeholder(spec.step(step_id)).rstrip("\n")
        assert spec.step(step_id).solution.strip() not in learner.cells[index].source
    assert [c.source for i, c in enumerate(reference.cells) if i not in cells.values()] == \
        [c.source for i, c in enumerate(learner.cells) if i not in cells.values()]
    assert nbformat.writes(editions.learner(reference, MIRRORING)) == nbformat.writes(learner)


def test_editions_command_writes_the_reference_and_check_finds_a_stale_learner_edition(
        tmp_path: Path) -> None:
    out = tmp_path / "build"
    made = subprocess.run([sys.executable, "-m", "meshkit.lab.editions", "reference", str(MIRRORING),
                           "-o", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    written = out / MIRRORING.name
    sources = "\n".join(c.source for c in nbformat.read(written, as_version=4).cells)
    assert 'rules.mirror("reviews", to="v2", percent=100, primary="v1")' in sources
    stale = subprocess.run([sys.executable, "-m", "meshkit.lab.editions", "check", str(written)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert stale.returncode == 1 and "not the learner edition" in stale.stderr
    fresh = subprocess.run([sys.executable, "-m", "meshkit.lab.editions", "check",
                            *map(str, sorted(LABS.glob("*.ipynb")))],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert fresh.returncode == 0, fresh.stderr


def test_export_student_turns_reference_editions_into_the_learner_editions(tmp_path: Path) -> None:
    reference_dir, out = tmp_path / "reference", tmp_path / "student"
    reference_dir.mkdir()
    for path in (MIRRORING, LABS / "07-authorization.ipynb"):
        editions.write("reference", path, reference_dir)
    command = [sys.executable, "-m", "meshkit.cli", "workshop", "export-student", str(reference_dir),
               str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "wrote 2 notebooks" in result.stdout, result.stdout
    exercised = sum(1 for lab in ("03-mirroring", "07-authorization") for step in catalog.get(lab).steps  # type: ignore[union-attr]
                    if step.exercise != "none")
    assert f"{exercised} exercise cells emptied" in result.stdout, result.stdout
    for name in ("03-mirroring.ipynb", "07-authorization.ipynb"):
        exported = nbformat.read(out / name, as_version=4)
        assert nbformat.writes(exported) == nbformat.writes(nbformat.read(LABS / name, as_version=4))


def test_exercise_cells_must_match_the_lab_steps() -> None:
    spec = catalog.get("03-mirroring")
    assert spec is not None
    nb = nbformat.read(MIRRORING, as_version=4)
    index = editions.exercise_cells(nb, spec)["mirror-50"]
    nb.cells[index].metadata["meshkit"]["exercise"] = "mirror-75"
    with pytest.raises(editions.EditionError, match=r"cell .*step 'mirror-75', which lab '03-mirroring' "
                                                    r"does not have"):
        editions.reference(nb, MIRRORING)
    del nb.cells[index]
    with pytest.raises(editions.EditionError, match=r"no exercise cell for step.*mirror-50"):
        editions.learner(nb, MIRRORING)


def test_an_empty_mesh_apply_cell_changes_nothing_and_needs_no_mesh() -> None:
    shown = magic.mesh_cell("apply", "# Exercise — write the YAML below\n\n")
    assert [str(s) for s in shown] == [magic.EMPTY]
    with pytest.raises(Exception, match="expected one of apply, analyze"):
        magic.mesh_cell("delete", "kind: VirtualService")


def test_progress_is_state_a_step_that_fails_again_is_regressed(tmp_path: Path) -> None:
    store = ProgressStore(StateDir.open(tmp_path))
    store.record("lab", "s", False, "not yet", 1.0)
    assert store.of("lab")["s"] | {} == {"passed": False, "done": False, "ever": False, "regressed": False,
                                          "reason": "not yet", "at": 1.0}
    store.record("lab", "s", True, "", 2.0)
    store.mark("lab", "s", solution_seen=1.5)
    entry = store.record("lab", "s", False, "the rule is gone", 3.0)
    assert entry["done"] is False and entry["ever"] is True and entry["regressed"] is True
    assert entry["solution_seen"] == 1.5  # facts that are not verdicts survive a new verdict
    assert json.loads(store.path.read_text())["lab"]["s"]["regressed"] is True


@pytest.mark.parametrize(("hits", "total", "expected", "passes"), [
    (10, 100, 0.1, True), (4, 100, 0.1, True), (17, 100, 0.1, True),   # noise around 90/10
    # 50/50 (or nothing) where 90/10 is asked
    (50, 100, 0.1, False), (0, 100, 0.1, False), (30, 60, 0.1, False),
    (0, 80, 0.0, True), (1, 80, 0.0, False), (52, 100, 0.5, True),
])
def test_shares_are_judged_by_an_exact_binomial_test(hits: int, total: int, expected: float,
                                                     passes: bool) -> None:
    counts = {"v3": float(hits), "v1": float(total - hits)}
    if passes:
        checks.require_share(counts, "v3", expected, what="reviews")
    else:
        with pytest.raises(checks.CheckFailed, match=f"v3 got {hits} of {total} requests"):
            checks.require_share(counts, "v3", expected, what="reviews")


def test_a_share_needs_enough_requests_to_be_judged() -> None:
    with pytest.raises(checks.CheckFailed, match="only 10 requests to judge"):
        checks.require_share({"v1": 9.0, "v3": 1.0}, "v3", 0.1, what="reviews")


def test_served_by_reads_the_reviews_version_of_a_bookinfo_page() -> None:
    page = "<dl><dt>Reviews served by:</dt><dd><u>reviews-v3-0</u></dd></dl>"
    assert checks.served_by(page) == "v3" and checks.served_by("<html></html>") is None
