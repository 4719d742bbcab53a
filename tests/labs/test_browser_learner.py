"""A learner in a real browser (Debian chromium, Playwright) on a lab's *learner* edition in JupyterLab,
joined to a real workshop server: Run All leaves every exercised step not done (the progress widget
shows none done; each was checked and recorded as not done, with a reason); then the learner types
the step's solution into its exercise cell with the keyboard, runs it and the cells after it, and the
step turns done (✔) in the progress widget (in every lab, one step each); a broadcast from the
instructor then appears in the open notebook without running any cell. The screenshot goes to
docs/images/labs/ with ``MESHKIT_UPDATE_SCREENSHOTS=1`` (otherwise to the test's temp dir).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.lab import catalog
from meshkit.workshop import client
from tests.labs.browser import CHROMIUM, chromium, free_port, jupyterlab, outputs, run_all
from tests.labs.conftest import LABS, as_first_time_learner, lab_progress, leave_workshops
from tests.pids import stop_group

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(420),  # above RUN_TIMEOUT_MS, so a stuck Run All reports what it shows
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: install Debian's chromium (./dev test does, as root)"),
]
pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images" / "labs"
LAB, STEP = "00-welcome", "traffic"
RUN_TIMEOUT_MS = 300_000  # a bound, not a timing claim: lab 05's challenge sends real traffic
WAIT_MS = 60_000

# The step each lab's browser test types, key by key, after Run All: a short solution and a quick check
# (lab -> step id). Lab 00's traffic step is typed by the workshop test above, with the broadcast.
TYPED_STEPS: dict[str, str] = {
    "00-welcome": "predict-sidecars",
    "01-request-routing": "all-v1",
    "02-canary": "promote",
    "03-mirroring": "mirror-100",
    "04-fault-injection": "delay",
    "05-resilience": "timeout",
    "06-mtls": "strict",
    "07-authorization": "identity",
    "08-observability": "baseline",
    "09-library-node-agent-sidecar": "library",
    "10-debugging-503s": "fix-3",
}
# where the learner starts running (the first code cell holding this text), when it is not the
# exercise cell: what the step stands on that Run All's later cells undid. Lab 05's later steps
# replace step 1's slow ratings; lab 10 ends with incidents.clear(), so incident 3 is planted again.
START_AT: dict[str, str] = {
    "05-resilience": 'rules.fault("ratings", delay="2s"',
    "10-debugging-503s": "incidents.plant(mesh, 3)",
}

PROGRESS_SAYS = """([line]) => [...document.querySelectorAll('.jp-OutputArea-output .widget-vbox')]
  .some((box) => box.querySelector('.widget-hprogress') && box.textContent.includes(line))"""

CELL_RAN_AGAIN = """([index, before]) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const count = panel.content.widgets[index].model.executionCount;
  return count !== null && count !== before && panel.sessionContext.session?.kernel?.status === 'idle';
}"""

CELL_MODEL = "window.jupyterapp.shell.currentWidget.content.widgets[index].model"
CELL_SOURCE = f"index => {CELL_MODEL}.sharedModel.getSource()"
EXECUTION_COUNT = f"index => {CELL_MODEL}.executionCount"


def _cell_index(notebook: Path, predicate: Any) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return next(i for i, cell in enumerate(cells) if predicate(cell, "".join(cell["source"])))


def type_the_solution_and_check(page: Any, notebook: Path, step: Any, start: str | None = None) -> None:
    """As a learner would: click into ``step``'s exercise cell, replace its placeholder by typing the
    step's solution key by key, run the cells from there (or from the code cell holding ``start``)
    down to the step's check cell with Shift+Enter, and wait until the check cell ran again and the
    progress widget shows the step done. Every wait polls the page for its condition."""
    exercise = _cell_index(notebook, lambda c, _s: c.get("metadata", {}).get("meshkit", {}).get("exercise")
                           == step.id)
    check = _cell_index(notebook, lambda c, s: c["cell_type"] == "code"
                        and s.strip() == f'lab.check("{step.id}")')
    first = exercise if start is None else _cell_index(notebook, lambda c, s: c["cell_type"] == "code"
                                                       and start in s)
    assert first <= exercise < check, (first, exercise, check)
    cells = page.locator(".jp-Notebook .jp-Cell")
    cell = cells.nth(exercise)
    cell.scroll_into_view_if_needed()
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.type(step.solution, delay=15)  # like a person, key by key (Enter between lines)
    # what was typed is the solution: no auto-indent, no auto-closed bracket
    page.wait_for_function(f"([index, text]) => ({CELL_SOURCE})(index) === text",
                           arg=[exercise, step.solution], timeout=WAIT_MS)
    before = page.evaluate(EXECUTION_COUNT, check)
    if first != exercise:
        cells.nth(first).scroll_into_view_if_needed()
        cells.nth(first).locator(".cm-content").click()
    for _ in range(check - first + 1):  # markdown cells in between just render again
        page.keyboard.press("Shift+Enter")
    page.wait_for_function(CELL_RAN_AGAIN, arg=[check, before], timeout=RUN_TIMEOUT_MS)
    check_output = cells.nth(check).locator(".jp-OutputArea-output")
    said = " ".join(check_output.all_text_contents())
    assert f"✔ {step.title}: passed" in said, f"lab.check({step.id!r}) after its solution said: {said[:2000]}"
    page.wait_for_function(PROGRESS_SAYS, arg=[f"✔ {step.title}"], timeout=WAIT_MS)


@pytest.fixture
def workshop(tmp_path: Path) -> Iterator[dict[str, str]]:
    """``meshkit workshop serve`` as a process; yields its url, instructor token and join code."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("meshkit")), "workshop", "serve", "--port", str(port),
               "--state-dir", str(tmp_path / "workshop-server")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        seen: dict[str, str] = {}
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while "dashboard" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            key, _, value = line.partition(":")
            seen[key.strip().split()[0] if key.strip() else ""] = value.strip()
        assert "dashboard" in seen, f"the workshop server did not start: {seen}"
        yield {"url": f"http://127.0.0.1:{port}", "token": seen["instructor"], "code": seen["join"]}
    finally:
        stop_group(proc)


def _broadcast(workshop: dict[str, str], text: str) -> None:
    request = urllib.request.Request(f"{workshop['url']}/api/instructor/broadcast", method="POST",
                                     data=json.dumps({"text": text}).encode(),
                                     headers={"Authorization": f"Bearer {workshop['token']}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def test_a_learner_types_a_solution_sees_the_step_done_and_a_broadcast_arrive(
        lab_env: dict[str, str], workshop: dict[str, str], tmp_path: Path) -> None:
    spec = catalog.get(LAB)
    assert spec is not None
    step = next(s for s in spec.steps if s.id == STEP)
    assert "\n" not in step.solution  # typed on one line: no editor auto-indent in play
    # the learner joins (meshkit.lab.join); the notebook's Lab finds the identity in $MESHKIT_HOME
    as_first_time_learner(lab_env, LAB)
    learner = client.join(workshop["url"], workshop["code"], "Browser Learner",
                          state_dir=Path(lab_env["MESHKIT_HOME"]) / "workshop")
    try:
        _type_the_solution_and_see_a_broadcast(lab_env, workshop, tmp_path, step, learner)
    finally:
        leave_workshops(lab_env)  # the session's later labs are self-study again


def _type_the_solution_and_see_a_broadcast(lab_env: dict[str, str], workshop: dict[str, str],
                                           tmp_path: Path, step: Any, learner: Any) -> None:
    env = dict(lab_env)
    (tmp_path / "jupyterlab").mkdir()
    shots = DOCS_IMAGES if os.environ.get("MESHKIT_UPDATE_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with jupyterlab(tmp_path / "jupyterlab", env) as server, chromium() as browser:
        name = f"{LAB}.ipynb"
        page = browser.open_notebook(server.add(LABS / name), name)
        try:
            run_all(page, "steps done", RUN_TIMEOUT_MS)  # lenient: the learner edition's checks fail
            has_bar = page.locator(".widget-hprogress")
            progress = outputs(page).locator(".widget-vbox").filter(has=has_bar).first
            progress.wait_for(state="attached", timeout=WAIT_MS)
            line = f"✔ {step.title}"
            assert line not in (progress.text_content() or ""), "Run All did the learner's exercise"

            type_the_solution_and_check(page, LABS / name, step)
            # the check cell has answered and the kernel is idle: from here on no prompt may change
            prompts = page.locator(".jp-InputPrompt").all_text_contents()

            text = "Break: back at 10:30"
            _broadcast(workshop, text)  # no cell runs from here on
            # polls the page itself (a handle on the widget's element would go stale if it re-rendered)
            page.wait_for_function(PROGRESS_SAYS, arg=[f"Instructor: {text}"], timeout=WAIT_MS)
            assert page.locator(".jp-InputPrompt").all_text_contents() == prompts, "a cell ran"
            for trouble in ("Error displaying widget", "Traceback"):
                assert not outputs(page).filter(has_text=trouble).count(), f"an output says {trouble!r}"
            progress.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / f"{LAB}-learner.png"))
        finally:
            page.close()
            server.shutdown_kernels()
    assert not browser.outside, f"requests left the machine: {browser.outside[:5]}"
    # the dashboard agrees: the learner's step is done on the server too
    request = urllib.request.Request(f"{workshop['url']}/api/instructor/state",
                                     headers={"Authorization": f"Bearer {workshop['token']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        state = json.load(response)
    row = next(r for r in state["attendees"] if r["id"] == learner.id)
    column = state["columns"].index([LAB, STEP])
    assert row["cells"][column] is not None and row["cells"][column][0] == "p", row["cells"]


ALL_CODE_CELLS_RAN = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets.filter((cell) => cell.model.type === 'code');
  return cells.every((cell) => cell.model.executionCount !== null)
    && panel.sessionContext.session?.kernel?.status === 'idle';
}"""


@pytest.fixture(scope="module")
def learner_lab(lab_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One JupyterLab (lenient checks, no retries: the learner editions' checks fail fast) and one
    browser for the screenshots of every lab."""
    env = {**lab_env, "MESHKIT_LAB_STRICT": "0", "MESHKIT_LAB_RETRY_FOR": "0"}
    with jupyterlab(tmp_path_factory.mktemp("jupyterlab-learner"), env) as server, chromium() as browser:
        yield server, browser
    assert not browser.outside, f"requests left the machine: {browser.outside[:5]}"


def test_every_lab_has_a_step_typed_in_the_browser() -> None:
    labs = sorted(path.stem for path in LABS.glob("*.ipynb"))
    assert sorted(TYPED_STEPS) == labs
    for lab, step_id in TYPED_STEPS.items():
        spec = catalog.get(lab)
        assert spec is not None
        step = next(step for step in spec.steps if step.id == step_id)
        assert step.exercise in ("python", "predict"), f"{lab}: {step_id} is not typed into a code cell"
        assert "    " not in step.solution, f"{lab}: {step_id}'s solution is indented (editor auto-indent)"


@pytest.mark.parametrize("name", sorted(path.name for path in LABS.glob("*.ipynb")))
def test_every_learner_edition_runs_and_renders_in_jupyterlab(
        name: str, learner_lab: Any, lab_env: dict[str, str], tmp_path: Path) -> None:
    """Run All on the learner edition: every code cell runs (no traceback), no widget error, the
    progress widget shows no exercised step done; a screenshot of its top for docs/images/labs/. Then
    the learner types one step's solution (`TYPED_STEPS`) into its exercise cell, runs it and its check
    cell, and the step turns done, in the same kernel (no extra JupyterLab nor kernel)."""
    server, browser = learner_lab
    shots = DOCS_IMAGES if os.environ.get("MESHKIT_UPDATE_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    as_first_time_learner(lab_env, name.removesuffix(".ipynb"))
    page = browser.open_notebook(server.add(LABS / name), name)
    try:
        began = time.time()
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        failed = outputs(page).filter(has_text="Traceback")
        page.wait_for_function(f"() => ({ALL_CODE_CELLS_RAN})() || [...document.querySelectorAll("
                               "'.jp-OutputArea-output')].some((o) => o.textContent.includes('Traceback'))",
                               timeout=RUN_TIMEOUT_MS)
        assert not failed.count(), f"{name}: a cell failed:\n{failed.first.inner_text()[:2000]}"
        for trouble in ("Error displaying widget", "Loading widget"):
            assert not outputs(page).filter(has_text=trouble).count(), f"{name}: an output says {trouble!r}"
        has_bar = page.locator(".widget-hprogress")
        progress = outputs(page).locator(".widget-vbox").filter(has=has_bar).first
        progress.wait_for(state="attached", timeout=WAIT_MS)
        progress.scroll_into_view_if_needed()
        progress.wait_for(state="visible", timeout=WAIT_MS)
        page.screenshot(path=str(shots / name.replace(".ipynb", ".png")))
        spec = catalog.get(name.removesuffix(".ipynb"))
        assert spec is not None
        shown = progress.text_content() or ""
        for step in spec.steps:
            if step.exercise != "none":
                assert f"✔ {step.title}" not in shown, f"{name}: Run All did step {step.id}"
        # and each step with an exercise was checked by that Run All, and recorded as not done, with why
        lab = name.removesuffix(".ipynb")
        recorded = lab_progress(lab_env, lab)
        for step in spec.steps:
            if step.exercise != "none":
                entry = recorded.get(step.id)
                assert entry is not None, f"{name}: step {step.id} was never checked"
                assert float(entry["at"]) >= began  # type: ignore[arg-type]
                assert entry["passed"] is False, f"{name}: step {step.id} passed without its exercise"
                assert str(entry["reason"]).strip(), f"{name}: step {step.id} failed without saying why"
        # then the learner does one step by hand: types its solution, runs it, sees it turn done
        typed = next(step for step in spec.steps if step.id == TYPED_STEPS[lab])
        type_the_solution_and_check(page, LABS / name, typed, START_AT.get(lab))
        assert not failed.count(), f"{name}: a cell failed:\n{failed.first.inner_text()[:2000]}"
    finally:
        page.close()
        server.shutdown_kernels()
