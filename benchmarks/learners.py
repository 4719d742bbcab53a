"""How many learners fit on one host: N learners' meshes side by side, and the memory each one costs.

As on a shared JupyterHub (The Littlest JupyterHub): every learner has their own ``MESHKIT_HOME``
and runs a plain ``meshkit up`` with no ``MESHKIT_PORT_BASE``. The first takes the default port
plan when it is free; every later one finds it taken and picks a free plan by itself (recorded in
its ``MESHKIT_HOME``). Then each learner's Bookinfo gets bounded traffic through its own ingress
(all learners at once), and must answer every request with 200.

Memory is read from ``/proc/<pid>/smaps_rollup`` for every process whose environment carries a
learner's ``MESHKIT_HOME`` (control plane, apps, sidecars, ingress): RSS (shared pages counted in
every process) and PSS (shared pages divided among their sharers: the honest share of one learner
when many run on one host), at rest after start-up and at the peak while the traffic runs; and the
host's ``MemAvailable`` before the first mesh and at the peak (other users of the machine add noise
to that one). JupyterLab and a kernel per learner come on top: `benchmarks/classroom.py` measures
them with a lab running.

Usage: ``.venv/bin/python benchmarks/learners.py [--learners 10] [--rps 10] [--seconds 10]
[--out FILE]``. Bounded: at most 20 learners, 60 s of traffic, 120 s per ``meshkit up``; every mesh
is stopped at the end, also on failure. Writes JSON (default benchmarks/results/learners.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.classroom import _rollup  # one reader of smaps_rollup for both benchmarks
from meshkit.runtime.load import LoadGenerator
from meshkit.runtime.local import LocalMesh
from meshkit.runtime.processes import with_environment
from meshkit.runtime.state import StateDir

ROOT = Path(__file__).resolve().parents[1]
MAX_LEARNERS = 20
MAX_SECONDS = 60.0
UP_TIMEOUT = 120
SAMPLE_EVERY = 0.5
MIB = 2**20


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Learner:
    name: str
    home: Path
    base_port: int = 0
    ingress: str = ""
    processes: int = 0
    rest: tuple[int, int] = (0, 0)  # (RSS, PSS) after start-up
    peak: tuple[int, int] = (0, 0)  # (RSS, PSS) at the highest PSS while traffic ran
    load: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "MESHKIT_PORT_BASE"}
        return {**env, "MESHKIT_HOME": str(self.home)}

    def memory(self) -> tuple[int, int, int]:
        """(RSS, PSS, processes) of every process of this learner's mesh."""
        pids = [rec.pid for rec in with_environment(f"MESHKIT_HOME={self.home}")]
        rolled = [_rollup(pid) for pid in pids]
        return sum(r for r, _ in rolled), sum(p for _, p in rolled), len(pids)


class Sampler(threading.Thread):
    """Samples every learner's memory and the host's MemAvailable while the traffic runs."""

    def __init__(self, learners: list[Learner]) -> None:
        super().__init__(daemon=True, name="learners-sampler")
        self.learners = learners
        self.lowest_available = _mem_available()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_EVERY):
            for learner in self.learners:
                rss, pss, _ = learner.memory()
                if pss > learner.peak[1]:
                    learner.peak = (rss, pss)
            self.lowest_available = min(self.lowest_available, _mem_available())


def up(learner: Learner) -> None:
    """A plain `meshkit up` in the learner's own MESHKIT_HOME (no MESHKIT_PORT_BASE)."""
    done = subprocess.run([sys.executable, "-m", "meshkit.cli", "up"], env=learner.env, capture_output=True,
                          text=True, timeout=UP_TIMEOUT, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{learner.name}: meshkit up failed ({done.returncode}):\n"
                         f"{done.stdout}\n{done.stderr}")
    mesh = LocalMesh(StateDir.open(learner.home))
    record = mesh.record()
    if record is None:
        raise SystemExit(f"{learner.name}: meshkit up left no mesh record in {learner.home}")
    learner.base_port = record.base_port
    learner.ingress = str(mesh.status()["ingress"])


def down(learner: Learner) -> None:
    subprocess.run([sys.executable, "-m", "meshkit.cli", "down"], env=learner.env, capture_output=True,
                   timeout=UP_TIMEOUT, check=False, cwd=ROOT)


def _mib(value: float) -> float:
    return round(value / MIB, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=10)
    parser.add_argument("--rps", type=float, default=10.0, help="page views a second per learner")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="seconds of traffic (all learners at once)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learners.json"))
    args = parser.parse_args()
    if not 1 <= args.learners <= MAX_LEARNERS or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--learners must be 1..{MAX_LEARNERS} and --seconds in (0, {MAX_SECONDS:.0f}]")
    scratch = Path(tempfile.mkdtemp(prefix="meshkit-learners-"))
    learners = [Learner(f"learner-{i:02d}", scratch / f"learner-{i:02d}") for i in range(args.learners)]
    available_before = _mem_available()
    started = time.monotonic()
    try:
        for learner in learners:
            learner.home.mkdir()
            t0 = time.monotonic()
            up(learner)
            print(f"{learner.name}: up in {time.monotonic() - t0:.1f} s on port base {learner.base_port}",
                  flush=True)
        up_seconds = time.monotonic() - started
        time.sleep(3.0)  # let start-up allocations settle before the "at rest" reading
        for learner in learners:
            rss, pss, learner.processes = learner.memory()
            learner.rest = (rss, pss)
        sampler = Sampler(learners)
        sampler.start()
        generators = [LoadGenerator(f"{learner.ingress}/productpage", rps=args.rps, duration=args.seconds,
                                    timeout=15.0).start() for learner in learners]
        deadline = time.monotonic() + args.seconds + 30
        while any(g.running() for g in generators) and time.monotonic() < deadline:
            time.sleep(0.25)
        for learner, generator in zip(learners, generators, strict=True):
            learner.load = generator.stop()
        sampler.stopped.set()
        sampler.join()
        bases = [learner.base_port for learner in learners]
        failures = {learner.name: learner.load.get("codes") for learner in learners
                    if set(learner.load.get("codes", {})) != {"200"} or not learner.load.get("completed")}
        rest_pss = [learner.rest[1] for learner in learners]
        peak_pss = [learner.peak[1] for learner in learners]
        result = {
            "learners": args.learners, "distinct_port_plans": len(set(bases)), "port_bases": bases,
            "up_seconds_total": round(up_seconds, 1),
            "traffic": {"rps_per_learner": args.rps, "seconds": args.seconds,
                        "requests": sum(int(learner.load.get("completed", 0)) for learner in learners),
                        "not_all_200": failures},
            "processes_per_learner": statistics.median(learner.processes for learner in learners),
            "per_learner_mib": {
                "rss_at_rest_median": _mib(statistics.median(learner.rest[0] for learner in learners)),
                "pss_at_rest_median": _mib(statistics.median(rest_pss)),
                "pss_peak_median": _mib(statistics.median(peak_pss)),
                "pss_peak_max": _mib(max(peak_pss)),
                "rss_peak_max": _mib(max(learner.peak[0] for learner in learners)),
            },
            "all_learners_mib": {"pss_at_rest": _mib(sum(rest_pss)), "pss_peak": _mib(sum(peak_pss)),
                                 "host_memavailable_drop_at_peak": _mib(available_before
                                                                        - sampler.lowest_available)},
            "load_average": os.getloadavg(),
        }
    finally:
        for learner in learners:
            down(learner)
        shutil.rmtree(scratch, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if failures or len(set(bases)) != args.learners:
        raise SystemExit(f"not every learner's mesh served its traffic on its own ports: {failures}, {bases}")


if __name__ == "__main__":
    main()
