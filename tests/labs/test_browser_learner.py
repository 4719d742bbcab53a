"""A learner in a real browser (Debian chromium, Playwright) on a lab's *learner* edition in JupyterLab,
joined to a real workshop server: Run All leaves the exercised step not done; then the learner types
the step's solution into its exercise cell with the keyboard, runs it and the cells after it, and the
step turns done (✔) in the progress widget; a broadcast from the instructor then appears in the open
notebook without running any cell. The screenshot goes to docs/images/labs/ with
``MESHKIT_UPDATE_SCREENSHOTS=1`` (otherwise to the test's temp dir).
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
from tests.labs.conftest import LABS, as_first_time_learner, leave_workshops
from tests.pids import stop_group

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: install Debian's chromium (./dev test does, as root)"),
]
pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images" / "labs"
LAB, STEP, EXERCISE_CELL = "00-welcome", "traffic", 10
RUN_TIMEOUT_MS = 300_000  # a bound, not a timing claim: lab 05's challenge sends real traffic
WAIT_MS = 60_000


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

            cell = page.locator(".jp-Notebook .jp-Cell").nth(EXERCISE_CELL)
            cell.scroll_into_view_if_needed()
            cell.locator(".cm-content").click()
            page.keyboard.press("Control+a")
            page.keyboard.type(step.solution, delay=15)  # like a person, key by key
            for _ in range(4):  # the exercise, the service graph, the wait for the load, the check
                page.keyboard.press("Shift+Enter")
            page.wait_for_function(
                "([el, line]) => el.textContent.includes(line)", arg=[progress.element_handle(), line],
                timeout=RUN_TIMEOUT_MS)
            check_output = cell.locator("xpath=following-sibling::*[3]").locator(".jp-OutputArea-output")
            assert "passed" in check_output.first.inner_text(), check_output.first.inner_text()
            prompts = page.locator(".jp-InputPrompt").all_inner_texts()

            text = "Break: back at 10:30"
            _broadcast(workshop, text)  # no cell runs from here on
            page.wait_for_function("([el, text]) => el.textContent.includes(text)",
                                   arg=[progress.element_handle(), f"Instructor: {text}"], timeout=WAIT_MS)
            assert page.locator(".jp-InputPrompt").all_inner_texts() == prompts, "a cell ran"
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


@pytest.mark.parametrize("name", sorted(path.name for path in LABS.glob("*.ipynb")))
def test_every_learner_edition_runs_and_renders_in_jupyterlab(
        name: str, learner_lab: Any, lab_env: dict[str, str], tmp_path: Path) -> None:
    """Run All on the learner edition: every code cell runs (no traceback), no widget error, the
    progress widget shows no exercised step done; a screenshot of its top for docs/images/labs/."""
    server, browser = learner_lab
    shots = DOCS_IMAGES if os.environ.get("MESHKIT_UPDATE_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    as_first_time_learner(lab_env, name.removesuffix(".ipynb"))
    page = browser.open_notebook(server.add(LABS / name), name)
    try:
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
    finally:
        page.close()
        server.shutdown_kernels()
