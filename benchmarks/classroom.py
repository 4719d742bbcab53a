"""What does a learner's classroom cost: the lab suite's run time, and the peak memory of it all?

Starts what `meshkit lab --no-browser` starts (the local mesh, then JupyterLab on ``labs/``) in a
fresh ``MESHKIT_HOME``, then runs every lab's reference edition top to bottom with nbclient, strict (a failing
check fails the run), one kernel per lab as a learner opening them one after another would. While
it runs, a sampler reads every 0.5 s the memory of EVERY process of the classroom: each process
whose environment carries this run's ``MESHKIT_HOME`` (the control plane, apps, sidecars, the
ingress, JupyterLab, the kernel, and what labs start from the kernel: clients deployed by lab 06,
lab 08's Prometheus, lab 09's node proxy).

Reported: seconds per lab and for the suite; peak RSS summed (what a container's limit such as
Binder's 2 GB counts, roughly; shared pages counted once per process) and peak PSS summed
(shared pages divided among the processes sharing them), overall and split into mesh /
JupyterLab / kernel / other.

Usage: ``.venv/bin/python benchmarks/classroom.py [--labs 02,05] [--out FILE]``. Bounded: each
cell 180 s, JupyterLab start 60 s. Needs the ``lab`` extra. Writes JSON (default
benchmarks/results/classroom.json).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from meshkit.lab import editions
from meshkit.runtime import catalog
from meshkit.runtime.ports import free_bases
from meshkit.runtime.processes import with_environment

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "labs"
CELL_TIMEOUT = 180
SAMPLE_EVERY = 0.5


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes from /proc/<pid>/smaps_rollup; (0, 0) when the process is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def _part(pid: int) -> str:
    """mesh, jupyterlab, kernel or other, from the process's command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    text = b" ".join(argv)
    if b"ipykernel" in text:
        return "kernel"
    if b"jupyterlab" in text or b"jupyter-lab" in text:
        return "jupyterlab"
    if b"meshkit.proxy" in text or b"meshkit.apps" in text or b"meshkit.cli" in text or b"control" in text:
        return "mesh"
    return "other"




@dataclass
class Peak:
    rss: int = 0
    pss: int = 0
    rss_by_part: dict[str, int] = field(default_factory=dict)
    processes: int = 0


class Sampler(threading.Thread):
    """Reads the classroom's memory every SAMPLE_EVERY seconds; keeps the peak (by RSS)."""

    def __init__(self, marker: str) -> None:
        super().__init__(daemon=True, name="classroom-sampler")
        self.marker = marker
        self.peak = Peak()
        self.stopped = threading.Event()

    def sample(self) -> None:
        by_part: dict[str, int] = {}
        rss_total = pss_total = 0
        pids = [rec.pid for rec in with_environment(self.marker)]
        for pid in pids:
            rss, pss = _rollup(pid)
            rss_total += rss
            pss_total += pss
            part = _part(pid)
            by_part[part] = by_part.get(part, 0) + rss
        if rss_total > self.peak.rss:
            self.peak = Peak(rss_total, max(pss_total, self.peak.pss), by_part, len(pids))
        else:
            self.peak.pss = max(self.peak.pss, pss_total)

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_EVERY):
            self.sample()


def _start_jupyterlab(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    """`meshkit lab --no-browser` (which brings the mesh up first), then waits for JupyterLab."""
    port = next(free_bases(1)) + 99
    log = (home / "jupyterlab.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "meshkit.cli", "lab", "--no-browser", "--port", str(port),
                             "--dir", str(LABS)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    url = f"http://127.0.0.1:{port}/api/status?token={env['JUPYTER_TOKEN']}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"meshkit lab exited with {proc.returncode}; see {home / 'jupyterlab.log'}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("JupyterLab did not answer within 60 s")


def run_lab(path: Path) -> float:
    """Seconds to run one lab's reference edition (solutions filled in) top to bottom, strict, in a
    fresh kernel."""
    notebook = editions.reference(nbformat.read(path, as_version=4), path)
    began = time.monotonic()
    NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT, startup_timeout=60,
                   resources={"metadata": {"path": str(LABS)}}).execute()
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", default="", help="comma-separated lab numbers (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "classroom.json"))
    args = parser.parse_args()
    wanted = {n.strip() for n in args.labs.split(",") if n.strip()}
    notebooks = [p for p in sorted(LABS.glob("[0-9][0-9]-*.ipynb")) if not wanted or p.name[:2] in wanted]
    home = Path(tempfile.mkdtemp(prefix="meshkit-classroom-"))
    instances = sum(s.replicas for s in catalog.resolve(["bookinfo", "clients"], {}))
    env = {**os.environ, "MESHKIT_HOME": str(home), "MESHKIT_PORT_BASE": str(next(free_bases(instances))),
           "MESHKIT_LAB_STRICT": "1", "JUPYTER_TOKEN": secrets.token_hex(16),
           **{f"JUPYTER_{d}_DIR": str(home / f"jupyter-{d.lower()}") for d in ("DATA", "CONFIG", "RUNTIME")},
           "IPYTHONDIR": str(home / "ipython")}
    os.environ.update({k: env[k] for k in ("MESHKIT_HOME", "MESHKIT_PORT_BASE", "MESHKIT_LAB_STRICT")})
    sampler = Sampler(f"MESHKIT_HOME={home}")
    lab_proc = _start_jupyterlab(env, home)
    sampler.start()
    times: dict[str, float] = {}
    try:
        for path in notebooks:
            times[path.stem] = round(run_lab(path), 1)
            peak_mib = sampler.peak.rss / 2**20
            print(f"{path.stem:<40} {times[path.stem]:6.1f} s, peak {peak_mib:.0f} MiB RSS", flush=True)
    finally:
        sampler.stopped.set()
        sampler.join()
        lab_proc.terminate()
        lab_proc.wait(15)
        subprocess.run([sys.executable, "-m", "meshkit.cli", "down"], env=env, check=False,
                       capture_output=True, timeout=60)
    peak = sampler.peak
    result = {"labs_seconds": times, "suite_seconds": round(sum(times.values()), 1),
              "peak_rss_mib": round(peak.rss / 2**20), "peak_pss_mib": round(peak.pss / 2**20),
              "peak_rss_mib_by_part": {k: round(v / 2**20) for k, v in sorted(peak.rss_by_part.items())},
              "processes_at_peak": peak.processes, "load_average": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
