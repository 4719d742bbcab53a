"""Labs in a real JupyterLab, driven by Debian's chromium through Playwright, as a person sees them.

The generated reference editions (with solutions) run in the browser. Lab 02: Run All renders the
canary slider and the live plotly chart, every check passes, and mesh + JupyterLab + kernel fit
Binder's 2 GB. Lab 05: Run All (strict) renders the response-flags chart as SVG bars, the progress
widget at every step done, and no error. One JupyterLab and one browser serve the module
(tests/labs/browser.py); each test shuts its notebook's kernel down.

Set-up: Debian ``chromium`` (``./dev test`` installs it as root) and the pip package ``playwright``
(test extra); Playwright's own browser download is never used. Only loopback requests are allowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.lab import catalog, editions
from meshkit.runtime.local import LocalMesh
from meshkit.runtime.processes import rss_bytes
from meshkit.runtime.state import StateDir
from tests.labs.browser import (
    CHROMIUM,
    Browser,
    JupyterLab,
    chromium,
    descendants,
    jupyterlab,
    outputs,
    run_all,
)
from tests.labs.conftest import LABS

RUN_TIMEOUT_MS = 300_000  # a bound, not a timing claim: lab 05's challenge sends real traffic
RENDER_TIMEOUT_MS = 20_000
PROGRESS = ".widget-hprogress"  # ipywidgets 8's IntProgress view
WIDGET_TROUBLE = ("Traceback", "Error displaying widget", "Loading widget", "not yet")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(420),  # above RUN_TIMEOUT_MS, so a stuck Run All reports what it shows
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: install Debian's chromium (./dev test does, as root)"),
]
pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")


@pytest.fixture(scope="module")
def server(lab_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """One JupyterLab for the module; its kernels find the lab mesh and run strict (a failing check
    raises)."""
    with jupyterlab(tmp_path_factory.mktemp("jupyterlab"), {**lab_env, "MESHKIT_LAB_STRICT": "1"}) as lab:
        yield lab


@pytest.fixture(scope="module")
def browser(server: JupyterLab) -> Iterator[Browser]:
    with chromium() as opened:
        yield opened
    assert not opened.outside, f"requests left the machine: {opened.outside[:5]}"


def _no_trouble(page: object) -> None:
    shown = outputs(page)
    for text in WIDGET_TROUBLE:
        assert not shown.filter(has_text=text).count(), f"an output says {text!r}"


def test_lab_02_renders_slider_and_live_chart_in_jupyterlab(lab_env: dict[str, str], server: JupyterLab,
                                                            browser: Browser, tmp_path: Path) -> None:
    reference = editions.write("reference", LABS / "02-canary.ipynb", tmp_path)
    page = browser.open_notebook(server.add(reference), "02-canary.ipynb")
    try:
        ran = run_all(page, "v3 takes all the traffic: passed", RUN_TIMEOUT_MS)
        shown = outputs(page)
        slider = shown.locator(".widget-slider, .widget-hslider").first
        slider.wait_for(state="attached", timeout=RENDER_TIMEOUT_MS)
        shown.locator(".js-plotly-plot").first.wait_for(state="attached", timeout=RENDER_TIMEOUT_MS)
        traces = page.evaluate("document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length")
        slider.scroll_into_view_if_needed()  # JupyterLab renders cells far below the fold lazily
        slider_value = slider.locator(".widget-readout").first.text_content() or ""
        _no_trouble(page)
        mesh_bytes = sum(LocalMesh(StateDir.open(lab_env["MESHKIT_HOME"])).memory().values())
        jupyter_bytes = sum(rss_bytes(pid) for pid in descendants(server.proc.pid))
        shown.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "lab-02.png"), full_page=False)
    finally:
        page.close()
        server.shutdown_kernels()
    assert traces >= 3, f"the live chart drew {traces} traces"
    assert slider_value.strip() == "50", f"the slider shows {slider_value!r}"
    total_mb = (mesh_bytes + jupyter_bytes) / 1e6
    print(f"\nlab 02 in JupyterLab: run all + checks in {ran:.1f} s; "
          f"RSS mesh {mesh_bytes / 1e6:.0f} MB + JupyterLab and kernel {jupyter_bytes / 1e6:.0f} MB "
          f"= {total_mb:.0f} MB")
    assert total_mb < 2000, "mesh + JupyterLab + kernel must fit Binder's 2 GB"


BAR_HEIGHTS = """plot => Array.from(plot.querySelectorAll('.barlayer .point path'))
    .map(path => path.getBBox().height).filter(height => height > 1).length"""


def test_lab_05_renders_response_flags_bars_and_progress_in_jupyterlab(server: JupyterLab, browser: Browser,
                                                                       tmp_path: Path) -> None:
    reference = editions.write("reference", LABS / "05-resilience.ipynb", tmp_path)
    page = browser.open_notebook(server.add(reference), "05-resilience.ipynb")
    try:
        spec = catalog.get("05-resilience")
        assert spec is not None
        ran = run_all(page, f"05-resilience: {len(spec.steps)}/{len(spec.steps)} steps done", RUN_TIMEOUT_MS)
        shown = outputs(page)
        flags = shown.locator(".js-plotly-plot").filter(has_text="response flags")
        flags.locator("svg.main-svg .barlayer").first.wait_for(state="attached", timeout=RENDER_TIMEOUT_MS)
        assert flags.count() == 1, f"{flags.count()} response-flags charts on the page"
        page.wait_for_function(f"plot => ({BAR_HEIGHTS})(plot) > 0", arg=flags.first.element_handle(),
                               timeout=RENDER_TIMEOUT_MS)
        bars = flags.first.evaluate(BAR_HEIGHTS)
        legend = flags.first.locator(".legend .traces .legendtext").all_text_contents()
        progress = shown.locator(".widget-vbox").filter(has=page.locator(PROGRESS)).first
        progress.wait_for(state="attached", timeout=RENDER_TIMEOUT_MS)
        progress.scroll_into_view_if_needed()
        filled = progress.locator(f"{PROGRESS} .progress-bar").evaluate("bar => bar.style.width")
        steps_text = progress.text_content() or ""
        _no_trouble(page)
        flags.first.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "lab-05.png"), full_page=False)
        print(f"\nlab 05 in JupyterLab: run all + checks in {ran:.1f} s; {bars} flag bars drawn; "
              f"progress bar filled {filled}")
    finally:
        page.close()
        server.shutdown_kernels()
    assert bars >= 1, "the response-flags chart drew no bar"
    assert {"-", "UT", "UO", "RL"} <= set(legend), f"the legend lacks flags: {legend}"
    assert filled == "100%", f"the progress bar is filled {filled!r}"
    assert steps_text.count("✔") == len(spec.steps), f"the progress widget shows {steps_text!r}"
    assert "✘" not in steps_text, f"the progress widget shows a failing step: {steps_text!r}"
