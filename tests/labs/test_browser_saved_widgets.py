"""A lab saved and reopened later shows its widgets, not "Error displaying widget: model not found".

JupyterLab as `meshkit lab` starts it (its application settings from `meshkit.lab.jupyter.settings_dir`,
which turn on the widget manager's ``saveState``), Debian's chromium through Playwright: a notebook
with a widget runs, is saved (the widget state lands in the notebook's metadata), its kernel is shut
down, and the notebook is opened again in a new page: the widget is drawn from the saved state. No
mesh is needed. Marker ``browser``; about 20 s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from meshkit.lab.jupyter import settings_dir
from tests.labs.browser import CHROMIUM, chromium, jupyterlab, outputs, run_all

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: install Debian's chromium (./dev test does, as root)"),
]
pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_a_saved_lab_reopens_with_its_widgets_drawn(tmp_path: Path) -> None:
    source = tmp_path / "saved-widgets.ipynb"
    nbformat.write(new_notebook(cells=[
        new_code_cell('import ipywidgets as widgets\nwidgets.IntSlider(value=7, description="kept")'),
        new_code_cell('print("cells done")')],
        metadata={"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                 "name": "python3"}}),
        source)
    settings = settings_dir(tmp_path / "meshkit-lab")
    extra = [f"--LabApp.app_settings_dir={settings}"]
    (tmp_path / "jl").mkdir()
    with jupyterlab(tmp_path / "jl", {}, extra) as lab, chromium() as browser:
        url = lab.add(source)
        page = browser.open_notebook(url, source.name)
        run_all(page, "cells done", 60_000)
        page.locator(".widget-slider").first.wait_for(timeout=20_000)
        page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
        saved = lab.root / source.name
        deadline = time.monotonic() + 20
        while WIDGET_STATE not in json.loads(saved.read_text()).get("metadata", {}).get("widgets", {}):
            assert time.monotonic() < deadline, f"no widget state saved in {saved}: {saved.read_text()[:500]}"
            time.sleep(0.2)
        page.close()
        lab.shutdown_kernels()  # reopened later: no kernel holds the widget's model any more
        again = browser.context.new_page()
        again.goto(url.replace("/workspaces/saved-widgets/", "/workspaces/reopened/"))
        again.locator(".widget-slider").first.wait_for(timeout=60_000)  # a cold reopen under CI load
        shown = " ".join(outputs(again).all_inner_texts())
        assert "Error displaying widget" not in shown and "model not found" not in shown, shown
        assert browser.outside == []
