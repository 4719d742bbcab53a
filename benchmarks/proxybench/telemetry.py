"""What telemetry costs a request on the real sidecar pair: ``istio_method.py --telemetry-cost``.

The mesh's two sidecars of the ``mesh`` way (sleep's outbound, httpbin's inbound, mTLS between them)
are restarted for each condition with ``MESHKIT_PROXY_TELEMETRY`` (the sidecar's ``--telemetry``):

* ``on``          as shipped: metrics, access log, tracing at the mesh's 1 % sampling
* ``off``         no metrics, access-log or tracing filter, no access log written
* ``no-tracing``  as shipped without the tracing filter (meshConfig.enableTracing: false)

Each condition is one open-loop run at a fixed rate; the figure is the CPU time (user + system,
/proc/PID/stat) both sidecar processes used during it, divided by the requests answered. Conditions
are interleaved (the order rotates each round) and reported as medians over rounds, with the load
average. It must not start or stop the mesh: ``istio_method.py`` does that.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from meshkit.runtime.local import LocalMesh
from meshkit.runtime.processes import stop

from .openloop import Point, get_request, run_point
from .processes import HarnessError, cpu_seconds, process_tree

TELEMETRY_ENV = "MESHKIT_PROXY_TELEMETRY"  # meshkit.proxy.main's, read by every sidecar at start
CONDITIONS = ("on", "off", "no-tracing")
# (figure, numerator condition, denominator condition, limit in percent): the data-plane issue's targets
RATIOS = {
    "telemetry on vs off, CPU per request": ("on", "off", 15.0),
    "tracing 1% vs tracing off, CPU per request": ("on", "no-tracing", 5.0),
}
PAIR = ("sleep-v1-0", "httpbin-v1-0")  # the instances whose sidecars carry the mesh way


@dataclass
class CostSample:
    condition: str
    round: int
    requests: int
    errors: int
    achieved_rps: float
    cpu_seconds: float  # both sidecars (and any helper they started) during the run
    counted_by_metrics: float  # istio_requests_total the inbound sidecar added: 0 with telemetry off
    loadavg_1m: float

    @property
    def cpu_us_per_request(self) -> float | None:
        return 1e6 * self.cpu_seconds / self.requests if self.requests else None


def inbound_counted(admin_port: int) -> float:
    """istio_requests_total (reporter=destination) of httpbin's sidecar so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats/prometheus", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("istio_requests_total{") and 'reporter="destination"' in line)


def restart_pair(mesh: LocalMesh, condition: str) -> dict[str, dict[str, Any]]:
    """Stop the pair's sidecars, start them (and their apps) again with ``condition``; the workloads."""
    previous = os.environ.get(TELEMETRY_ENV)
    os.environ[TELEMETRY_ENV] = condition  # the launcher gives sidecars our environment
    try:
        record = mesh.record()
        if record is None:
            raise HarnessError("the mesh is gone")
        pids = {w["sidecar_pid"] for w in mesh.status()["workloads"] if w["name"] in PAIR}
        stop([p for p in record.processes.values() if p.pid in pids])
        for instance in PAIR:
            mesh.restart(instance, timeout=60.0)
    finally:
        if previous is None:
            os.environ.pop(TELEMETRY_ENV, None)
        else:
            os.environ[TELEMETRY_ENV] = previous
    return {w["name"]: w for w in mesh.status()["workloads"]}


def measure_condition(mesh: LocalMesh, condition: str, point: Point, round_no: int, *, path: str, host: str,
                      check: Callable[[int], None]) -> CostSample:
    workloads = restart_pair(mesh, condition)
    sleep, httpbin = workloads[PAIR[0]], workloads[PAIR[1]]
    port = int(sleep["outbound_proxy"].rsplit(":", 1)[1])
    check(port)
    target, request = ("127.0.0.1", port), get_request(path, host)
    asyncio.run(run_point(Point(point.rate, point.connections, 2), target, request))  # warm: pools, code
    pids = [pid for root in (sleep["sidecar_pid"], httpbin["sidecar_pid"]) for pid in process_tree(root)]
    counted = inbound_counted(httpbin["admin_port"])
    loadavg = os.getloadavg()[0]
    before = cpu_seconds(pids)
    result = asyncio.run(run_point(point, target, request))
    used = cpu_seconds(pids) - before
    return CostSample(condition, round_no, result.completed, result.errors + result.non_2xx,
                      round(result.achieved_rps, 1), used, inbound_counted(httpbin["admin_port"]) - counted,
                      round(loadavg, 2))


def run_conditions(mesh: LocalMesh, point: Point, rounds: int, *, path: str, host: str,
                   check: Callable[[int], None], console: Console) -> list[CostSample]:
    samples = []
    for round_no in range(rounds):
        shift = round_no % len(CONDITIONS)
        for condition in [*CONDITIONS[shift:], *CONDITIONS[:shift]]:
            sample = measure_condition(mesh, condition, point, round_no, path=path, host=host, check=check)
            console.print(f"round {round_no + 1} telemetry {condition:<10} {sample.requests} requests, "
                          f"{sample.achieved_rps} req/s, {sample.cpu_seconds:.2f} s CPU (2 sidecars), "
                          f"{_fmt(sample.cpu_us_per_request, 1)} µs/request, errors {sample.errors}, "
                          f"counted by metrics {sample.counted_by_metrics:.0f}, load {sample.loadavg_1m}",
                          highlight=False)
            samples.append(sample)
    return samples


def summarize(samples: list[CostSample]) -> dict[str, Any]:
    """Medians per condition, the two ratios of those medians with their verdicts, and the ratios of
    each round's pair of runs with their median (the spread: on a busy machine it is the noise)."""
    conditions: dict[str, dict[str, Any]] = {}
    for condition in CONDITIONS:
        runs = [s for s in samples if s.condition == condition]
        per_request = [v for s in runs if (v := s.cpu_us_per_request) is not None]
        conditions[condition] = {
            "rounds": len(runs),
            "cpu_us_per_request_pair": _median(per_request),
            "cpu_us_per_request_per_sidecar": (m / 2 if (m := _median(per_request)) is not None else None),
            "all_cpu_us_per_request_pair": [round(v, 1) for v in per_request],
            "achieved_rps": _median([s.achieved_rps for s in runs]),
            "errors": sum(s.errors for s in runs),
            "counted_by_metrics": sum(s.counted_by_metrics for s in runs),
            "loadavg_1m": _median([s.loadavg_1m for s in runs]),
        }
    ratios: dict[str, dict[str, Any]] = {}
    for name, (top, bottom, limit) in RATIOS.items():
        a, b = conditions[top]["cpu_us_per_request_pair"], conditions[bottom]["cpu_us_per_request_pair"]
        value = 100 * (a - b) / b if a is not None and b else None
        per_round = []
        for round_no in sorted({s.round for s in samples}):
            x, y = (_cost(samples, round_no, condition) for condition in (top, bottom))
            if x is not None and y:
                per_round.append(round(100 * (x - y) / y, 1))
        paired = _median(per_round)
        ratios[name] = {"percent": value, "limit": f"<= {limit}%", "per_round_percent": per_round,
                        "median_per_round_percent": paired, "verdict": _verdict([value, paired], limit)}
    loads = [s.loadavg_1m for s in samples]
    return {"conditions": conditions, "ratios": ratios,
            "loadavg_1m": {"min": min(loads, default=None), "median": _median(loads),
                           "max": max(loads, default=None)}}


def render(console: Console, summary: dict[str, Any]) -> None:
    grid = Table(title="CPU per request of the sidecar pair (mTLS), medians over rounds")
    for column in ("telemetry", "rounds", "µs/request (pair)", "µs/request/sidecar", "each round", "req/s",
                   "errors", "counted by metrics", "load 1m"):
        grid.add_column(column, justify="left" if column == "telemetry" else "right")
    for condition, cell in summary["conditions"].items():
        grid.add_row(condition, str(cell["rounds"]), _fmt(cell["cpu_us_per_request_pair"], 1),
                     _fmt(cell["cpu_us_per_request_per_sidecar"], 1),
                     " ".join(f"{v:.1f}" for v in cell["all_cpu_us_per_request_pair"]),
                     _fmt(cell["achieved_rps"], 0), str(cell["errors"]), f"{cell['counted_by_metrics']:.0f}",
                     _fmt(cell["loadavg_1m"], 2))
    console.print(grid)
    grid = Table(title="targets (the data-plane issue)")
    for column in ("figure", "value (of medians)", "each round", "median of rounds", "target", "verdict"):
        grid.add_column(column)
    for name, ratio in summary["ratios"].items():
        value, paired = ratio["percent"], ratio["median_per_round_percent"]
        grid.add_row(name, "-" if value is None else f"{value:+.1f}%",
                     " ".join(f"{v:+.1f}%" for v in ratio["per_round_percent"]),
                     "-" if paired is None else f"{paired:+.1f}%", ratio["limit"], ratio["verdict"])
    console.print(grid)


def _verdict(values: list[float | None], limit: float) -> str:
    """PASS or FAIL when both readings (ratio of medians, median of per-round ratios) agree, else
    UNDECIDED: the difference is inside the round-to-round noise of this run."""
    if any(v is None for v in values):
        return "n/a"
    met = {v <= limit for v in values if v is not None}
    return "UNDECIDED" if len(met) > 1 else ("PASS" if met == {True} else "FAIL")


def _cost(samples: list[CostSample], round_no: int, condition: str) -> float | None:
    return next((s.cpu_us_per_request for s in samples if s.round == round_no and s.condition == condition),
                None)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
