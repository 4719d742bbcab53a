"""meshkit.lab.prometheus: a real Prometheus (Debian package `prometheus`) scraping a real mesh's sidecars."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshkit.lab import LabError, connect
from meshkit.lab.mesh import Mesh
from meshkit.lab.prometheus import INSTALL_HINT, Prometheus, available, config, target_groups
from tests.pids import alive

needs_prometheus = pytest.mark.skipif(
    not available(), reason="no prometheus binary (apt-get install prometheus, or set MESHKIT_PROMETHEUS)")


def test_targets_become_file_discovery_groups_with_their_metrics_path() -> None:
    groups = target_groups([{"name": "reviews-v1-0.default", "url": "http://127.0.0.1:24300/stats/prometheus"}])
    assert groups == [{"targets": ["127.0.0.1:24300"],
                       "labels": {"__metrics_path__": "/stats/prometheus", "__scheme__": "http",
                                  "meshkit_target": "reviews-v1-0.default"}}]
    with pytest.raises(LabError, match="scrape target 'x' has no usable url"):
        target_groups([{"name": "x", "url": "127.0.0.1"}])
    job = config(Path("/tmp/t.json"))["scrape_configs"][0]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/t.json"]


def test_without_the_binary_start_says_how_to_install_it(mesh: Mesh, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("MESHKIT_PROMETHEUS", str(tmp_path / "missing"))
    assert not available()
    with pytest.raises(LabError) as caught:
        Prometheus(mesh, directory=tmp_path / "p").start()
    assert caught.value.summary == INSTALL_HINT and "apt-get install prometheus" in INSTALL_HINT


@needs_prometheus
def test_promql_from_istios_docs_sees_the_mesh_traffic(mesh: Mesh, tmp_path: Path) -> None:
    with Prometheus(mesh, directory=tmp_path / "prom") as prom:
        pid = prom.process.pid if prom.process else 0
        assert {r["health"] for r in prom.targets().rows} == {"up"}
        assert len(prom.targets().rows) == len(mesh.scrape_targets())
        counted = 'sum(istio_requests_total{reporter="destination",destination_workload="productpage-v1"})'
        before = prom.query(counted).total()  # the counter as scraped so far (it counts since the mesh began)
        sent = mesh.load(rps=15, duration=3).wait(15)["completed"]
        promql = 'sum(rate(istio_requests_total{reporter="destination"}[1m])) by (destination_workload)'
        result = prom.wait_for(promql, at_least=0.0, timeout=10)
        rates = result.by("destination_workload")
        assert {"productpage-v1", "details-v1"} <= set(rates) and rates["productpage-v1"] > 0
        after = prom.wait_for(counted, at_least=before + sent - 1, timeout=10).total()
        assert after - before == sent  # every request of the load, counted by productpage's sidecar, once
        assert "destination_workload" in str(result)
        with pytest.raises(LabError, match=r"PromQL 'sum\(rate\(' was refused: .*parse error"):
            prom.query("sum(rate(")
    assert not alive(pid) and not prom.running()
    with pytest.raises(LabError, match="prometheus is not running"):
        prom.query("up")


@needs_prometheus
def test_prometheus_dies_with_the_process_that_started_it(lab_env: dict[str, str], tmp_path: Path) -> None:
    script = ("import pathlib, time\nfrom meshkit.lab import connect\n"
              "from meshkit.lab.prometheus import Prometheus\n"
              f"p = Prometheus(connect(), directory=pathlib.Path({str(tmp_path / 'p')!r}))\n"
              "p.start(scraped=False)\n"
              "print(p.process.pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ})
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert alive(pid)
    finally:
        parent.send_signal(signal.SIGKILL)  # a crashed kernel: no stop() runs
        parent.wait(10)
    deadline = time.monotonic() + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), "prometheus outlived the process that started it"


def test_lab_08s_prometheus_cells_say_how_to_install_it_when_it_is_missing(
        lab_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Lab 08 runs without Prometheus: its Prometheus cells print the install hint instead of failing
    (the whole lab, checks included, runs in test_notebooks with whatever is installed)."""
    import nbformat  # noqa: PLC0415 (lab extra)
    from nbclient import NotebookClient  # noqa: PLC0415

    from tests.labs.conftest import LABS  # noqa: PLC0415

    monkeypatch.setenv("MESHKIT_PROMETHEUS", str(tmp_path / "no-prometheus-here"))
    monkeypatch.setenv("MESHKIT_LAB_STRICT", "1")
    nb = nbformat.read(LABS / "08-observability.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    prom_cells = [c for c in code[1:] if "INSTALL_HINT" in c.source]
    assert len(prom_cells) >= 3  # start, rate per workload, errors per edge
    nb.cells = [code[0], *prom_cells]
    NotebookClient(nb, kernel_name="python3", timeout=60, startup_timeout=60,
                   resources={"metadata": {"path": str(LABS)}}).execute()
    for cell in prom_cells:
        printed = "".join(o.get("text", "") for o in cell.outputs)
        assert "Prometheus is not installed here" in printed, cell.source
    connect().reset()
