"""Istio's performance method on the mesh as `meshkit up` ships it, next to nginx -> nginx over TLS.

Usage: ``.venv/bin/python benchmarks/istio_method.py [--seconds 60] [--rounds 1] [--quick]
[--points 1000x16,1000x4,200x1] [--out FILE]``

Istio measures a sidecar pair with fortio at a fixed 1000 requests/s, 1 KB answers, 16 (and 4)
connections, mutual TLS, for 60 s, and publishes latency added over a direct call plus vCPU and
memory per sidecar per 1000 requests/s. This does the same on this machine, in ONE run:

* ``direct``        open-loop client -> the httpbin app of the mesh (its own port, no sidecar)
* ``mesh``          client -> sleep's sidecar (outbound, as HTTP_PROXY) -(mTLS)-> httpbin's sidecar
                    (inbound) -> httpbin: the sidecars, snapshots, access logs and telemetry scraping
                    exactly as `meshkit up --app httpbin --app clients` starts them (httpbin-v2 scaled to
                    0 so that every request crosses the same two sidecars)
* ``nginx-x2-tls``  client -> nginx -(TLS with client certificates)-> nginx -> httpbin: the reference

Every target ends at the same httpbin app (``GET /bytes/1024``), so "added" is the path's own cost.
The load is open-loop with coordinated-omission correction (``proxybench/openloop.py``). Targets
are interleaved within each round and every figure is a median over rounds; compare within one run.
Writes JSON (default benchmarks/results/istio_method.json). Bounded: points <= 120 s, rounds <= 10.

``--concurrency N`` (N > 1) adds the way ``mesh-cN``: a second mesh of the same apps started with
``MESHKIT_PROXY_CONCURRENCY=N`` (the sidecar's ``--concurrency`` default; the app sets are not stored
Deployments a ``proxy.istio.io/config`` patch could reach), so both sidecars of its pair run N
processes; interleaved with the others, its CPU and RSS the whole process tree's of each sidecar.

``--telemetry-cost`` measures instead what telemetry costs the ``mesh`` way's two sidecars: CPU time
per request at the first ``--points`` point with telemetry on (as shipped), off, and with tracing off,
the sidecars restarted for each condition, interleaved over ``--rounds`` (default 3); see
``proxybench/telemetry.py``. Writes benchmarks/results/telemetry_cost.json unless ``--out`` says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxybench import session, telemetry
from proxybench.load import LoadError, Wrk
from proxybench.openloop import OpenLoopResult, Point, get_request, run_point
from proxybench.processes import Child, HarnessError, Supervisor, cpu_seconds, process_tree, rss_bytes
from proxybench.shipped import HOST, PATH, outbound_port, start_mesh
from proxybench.targets import Stage
from proxybench.tlsref import start_nginx_tls_pair
from rich.console import Console
from rich.table import Table

from meshkit.runtime.local import LocalMesh

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "istio_method.json"
MIB = 1024 * 1024
# Istio's published figures (the anchors: no Envoy can be installed here).
ISTIO = {
    "source": "istio.io, Performance and Scalability, Istio 1.24: 1000 HTTP requests/s with 1 KB payloads; "
              "the added P90 is read off the latency graphs of the 1.20-1.22 pages (16 connections, mTLS)",
    "vcpu_per_sidecar_per_1000rps": 0.20,  # a sidecar with 2 worker threads
    "memory_mb_per_sidecar": 60,
    "pair_added_p90_ms": "0.2-0.3",
}
# The targets of the data-plane issue, as (figure, limit, direction).
TARGETS = {
    "mesh req/s @16 closed loop / nginx-x2-tls": (0.6, ">="),
    "mesh p99 @16 closed loop / nginx-x2-tls": (2.0, "<="),
    "mesh added p50 @1 conn / nginx-x2-tls added p50": (2.0, "<="),
    "pair added p90 ms @1000rps x16": (1.0, "<="),
    "vCPU per sidecar per 1000 rps @1000rps x16": (0.10, "<="),
    "RSS MiB per sidecar": (30.0, "<="),
}


@dataclass
class Way:
    """One way of reaching httpbin: a port, the processes charged for it, how many proxies they are."""

    name: str
    description: str
    port: int
    roots: list[int] = field(default_factory=list)  # pids whose trees are the proxies
    proxies: int = 0


@dataclass
class Sample:
    way: str
    point: Point
    round: int
    result: OpenLoopResult
    cpu_seconds: float
    rss_per_proxy: int
    loadavg_1m: float


def parse_points(text: str) -> list[Point]:
    points = []
    for part in text.split(","):
        rate, _, conns = part.strip().partition("x")
        try:
            points.append(Point(float(rate), int(conns), 0))
        except ValueError:
            raise SystemExit(f"--points: expected RATExCONNECTIONS like 1000x16, got {part!r}") from None
    return points


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=60, choices=range(1, 121), metavar="1..120")
    parser.add_argument("--rounds", type=int, choices=range(1, 11), metavar="1..10",
                        help="default 1, 3 with --telemetry-cost")
    parser.add_argument("--points", default="1000x16,1000x4,200x1")
    parser.add_argument("--max-seconds", type=int, default=10, choices=range(0, 61), metavar="0..60",
                        help="closed-loop wrk -t1 -c16 per way for the throughput ceiling (0: skip)")
    parser.add_argument("--quick", action="store_true", help="5 s per point, 1 round")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    parser.add_argument("--concurrency", type=int, default=1, choices=range(1, 9), metavar="1..8",
                        help="N > 1 adds the way mesh-cN: a second mesh, its two sidecars --concurrency N")
    parser.add_argument("--telemetry-cost", action="store_true",
                        help="CPU per request of the sidecar pair with telemetry on / off / tracing off")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.telemetry_cost else 1
    return args


# -- the mesh as shipped ------------------------------------------------------------------------------


CONCURRENCY_ENV = "MESHKIT_PROXY_CONCURRENCY"  # meshkit.proxy.main's --concurrency default


def start_mesh_with_workers(home: Path, workers: int) -> dict[str, Any]:
    """A second mesh like ``start_mesh``'s whose sidecars run ``workers`` processes each; checked."""
    previous = os.environ.get(CONCURRENCY_ENV)
    os.environ[CONCURRENCY_ENV] = str(workers)  # the launcher gives sidecars our environment
    try:
        mesh, workloads = start_mesh(home)
    finally:
        if previous is None:
            os.environ.pop(CONCURRENCY_ENV, None)
        else:
            os.environ[CONCURRENCY_ENV] = previous
    for name in ("httpbin-v1-0", "sleep-v1-0"):
        pid = workloads[name]["sidecar_pid"]
        if len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()) != workers - 1:
            mesh.down()
            raise HarnessError(f"{name}'s sidecar does not run {workers} processes")
    return {"mesh": mesh, "workloads": workloads}


def fetch(port: int, *, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", headers={"Host": HOST})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.status, answer.read()


def check_way(way: Way) -> None:
    status, body = fetch(way.port)
    if status != 200 or len(body) != 1024:
        raise HarnessError(f"{way.name}: GET {PATH} via 127.0.0.1:{way.port} gave {status} with {len(body)} "
                           "bytes, expected 200 and 1024 bytes")


def mtls_requests(admin_port: int) -> float:
    """istio_requests_total the receiving sidecar reported with connection_security_policy=mutual_tls."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats/prometheus", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
               and 'connection_security_policy="mutual_tls"' in line)


# -- measuring ---------------------------------------------------------------------------------------------


def measure(way: Way, point: Point, round_no: int) -> Sample:
    trees = [process_tree(root) for root in way.roots]
    pids = [pid for tree in trees for pid in tree]
    loadavg = os.getloadavg()[0]
    before = cpu_seconds(pids)
    result = asyncio.run(run_point(point, ("127.0.0.1", way.port), get_request(PATH, HOST)))
    used = cpu_seconds(pids) - before
    rss = max((rss_bytes(tree) for tree in trees), default=0)
    return Sample(way.name, point, round_no, result, used, rss, round(loadavg, 2))


def run_rounds(ways: list[Way], points: list[Point], rounds: int, console: Console) -> list[Sample]:
    for way in ways:  # warm every path up: connection pools, certificates, the app's code paths
        asyncio.run(run_point(Point(200, 4, 2), ("127.0.0.1", way.port), get_request(PATH, HOST)))
    samples = []
    for round_no in range(rounds):
        for point in points:
            shift = (round_no + points.index(point)) % len(ways)
            for way in [*ways[shift:], *ways[:shift]]:
                sample = measure(way, point, round_no)
                summary = sample.result.summary()
                console.print(f"round {round_no + 1} {point.label:>12} {way.name:<13} "
                              f"p50 {summary['p50_us']} p90 {summary['p90_us']} p99 {summary['p99_us']} µs, "
                              f"{summary['achieved_rps']} req/s, errors {summary['errors']}, "
                              f"non-2xx {summary['non_2xx']}, unsent {summary['unsent']}, "
                              f"load {sample.loadavg_1m}", highlight=False)
                samples.append(sample)
    return samples


def ceilings(ways: list[Way], wrk: Wrk, seconds: int, console: Console) -> dict[str, dict[str, float]]:
    """Closed loop at 16 connections (wrk -t1): the most each way answers, and its p99 meanwhile."""
    found = {}
    for way in ways:
        load = wrk.run(way.port, HOST, 16, seconds, PATH)
        found[way.name] = {"rps": round(load.rps, 1), "p99_us": load.p99_us,
                           "errors": load.errors + load.non_2xx}
        console.print(f"ceiling {way.name:<13} {load.rps:.0f} req/s, p99 {load.p99_us:.0f} µs at 16 "
                      "connections (closed loop)", highlight=False)
    return found


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(samples: list[Sample], ways: list[Way]) -> dict[str, dict[str, Any]]:
    """point label -> way -> medians over rounds (latencies, added latencies vs direct, CPU, RSS)."""
    proxies = {way.name: way.proxies for way in ways}
    direct = {(s.point.label, s.round): s.result for s in samples if s.way == "direct"}
    table: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(s.point.label for s in samples):
        for way in ways:
            runs = [s for s in samples if s.point.label == label and s.way == way.name]
            cell: dict[str, Any] = {"rounds": len(runs)}
            for q in (50, 90, 99):
                cell[f"p{q}_us"] = _median([v for r in runs if (v := r.result.percentile(q)) is not None])
                added = [v - d for r in runs
                         if (v := r.result.percentile(q)) is not None
                         and (d := direct[(label, r.round)].percentile(q)) is not None]
                cell[f"added_p{q}_us"] = _median(added) if way.name != "direct" else 0.0
            cell["achieved_rps"] = _median([r.result.achieved_rps for r in runs])
            cell["errors"] = sum(r.result.errors + r.result.non_2xx for r in runs)
            if proxies[way.name]:
                per_1000 = [r.cpu_seconds / r.result.elapsed_s / (r.result.achieved_rps / 1000)
                            / proxies[way.name] for r in runs if r.result.achieved_rps]
                cell["vcpu_per_proxy_per_1000rps"] = _median(per_1000)
                cell["rss_mib_per_proxy"] = max(r.rss_per_proxy for r in runs) / MIB
            table.setdefault(label, {})[way.name] = cell
    return table


def verdicts(table: dict[str, dict[str, Any]],
             ceiling: dict[str, dict[str, float]] | None) -> dict[str, dict[str, Any]]:
    figures: dict[str, float | None] = {}
    if ceiling:
        mesh, nginx = ceiling["mesh"], ceiling["nginx-x2-tls"]
        figures["mesh req/s @16 closed loop / nginx-x2-tls"] = (
            mesh["rps"] / nginx["rps"] if nginx["rps"] else None)
        figures["mesh p99 @16 closed loop / nginx-x2-tls"] = (
            mesh["p99_us"] / nginx["p99_us"] if nginx["p99_us"] else None)
    low = next((cells for label, cells in table.items() if label.endswith("x1")), None)
    if low is not None:
        mesh, nginx = low["mesh"]["added_p50_us"], low["nginx-x2-tls"]["added_p50_us"]
        figures["mesh added p50 @1 conn / nginx-x2-tls added p50"] = (
            mesh / nginx if mesh is not None and nginx and nginx > 0 else None)
    istio = table.get("1000rps x16")
    if istio is not None:
        added = istio["mesh"]["added_p90_us"]
        figures["pair added p90 ms @1000rps x16"] = added / 1000 if added is not None else None
        vcpu = istio["mesh"].get("vcpu_per_proxy_per_1000rps")
        figures["vCPU per sidecar per 1000 rps @1000rps x16"] = vcpu
    rss = [cells["mesh"].get("rss_mib_per_proxy") for cells in table.values()]
    figures["RSS MiB per sidecar"] = max((r for r in rss if r is not None), default=None)
    out = {}
    for name, value in figures.items():
        limit, direction = TARGETS[name]
        met = value is not None and (value >= limit if direction == ">=" else value <= limit)
        out[name] = {"value": value, "limit": f"{direction} {limit}",
                     "verdict": "n/a" if value is None else ("PASS" if met else "FAIL")}
    return out


def render(console: Console, table: dict[str, dict[str, Any]], checks: dict[str, dict[str, Any]]) -> None:
    for label, cells in table.items():
        grid = Table(title=f"{label}: latency (µs) and added latency vs direct, medians over rounds")
        for column in ("way", "p50", "p90", "p99", "added p50", "added p90", "added p99", "req/s",
                       "vCPU/proxy/1000rps", "RSS MiB/proxy", "errors"):
            grid.add_column(column, justify="left" if column == "way" else "right")
        for way, cell in cells.items():
            latencies = ("p50_us", "p90_us", "p99_us", "added_p50_us", "added_p90_us", "added_p99_us")
            grid.add_row(way, *(_fmt(cell.get(k)) for k in (*latencies, "achieved_rps")),
                         _fmt(cell.get("vcpu_per_proxy_per_1000rps"), 3),
                         _fmt(cell.get("rss_mib_per_proxy"), 1), str(cell["errors"]))
        console.print(grid)
    grid = Table(title="targets (the data-plane issue) and Istio's published figures")
    for column in ("figure", "value", "target", "verdict"):
        grid.add_column(column)
    for name, check in checks.items():
        grid.add_row(name, _fmt(check["value"], 3), check["limit"], check["verdict"])
    console.print(grid)
    console.print(f"Istio: {ISTIO['vcpu_per_sidecar_per_1000rps']} vCPU and {ISTIO['memory_mb_per_sidecar']} "
                  f"MB per sidecar per 1000 rps; pair added P90 {ISTIO['pair_added_p90_ms']} ms "
                  f"({ISTIO['source']})")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_telemetry_cost(args: argparse.Namespace, console: Console) -> int:
    """The telemetry ratios of the data-plane issue on the mesh as shipped (no nginx, no wrk)."""
    first = parse_points(args.points)[0]
    point = Point(first.rate, first.connections, 5 if args.quick else args.seconds)
    out = DEFAULT_OUT.with_name("telemetry_cost.json") if args.out == DEFAULT_OUT else args.out
    meta: dict[str, Any] = {"command": session.command_line(),
                            "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                            "plan": {"rounds": args.rounds, "seconds": point.seconds, "point": point.label,
                                     "conditions": list(telemetry.CONDITIONS)},
                            "host": session.host_facts()}
    workdir = Path(tempfile.mkdtemp(prefix="meshkit-telemetry-cost-"))
    mesh: LocalMesh | None = None
    try:
        console.print("starting the mesh as shipped: meshkit up --app httpbin --app clients (httpbin-v2=0)")
        mesh, _ = start_mesh(workdir / "mesh")

        def check(port: int) -> None:
            check_way(Way("mesh", "", port))

        samples = telemetry.run_conditions(mesh, point, args.rounds, path=PATH, host=HOST, check=check,
                                           console=console)
        meta["host"]["loadavg_at_end"] = list(os.getloadavg())
    except (HarnessError, OSError) as exc:
        console.print(f"[red]benchmark aborted: {exc}[/]")
        return 1
    finally:
        if mesh is not None:
            mesh.down()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    summary = telemetry.summarize(samples)
    telemetry.render(console, summary)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = [{**vars(s), "cpu_us_per_request": s.cpu_us_per_request} for s in samples]
    out.write_text(json.dumps({"meta": meta, **summary, "samples": raw}, indent=2))
    console.print(f"results written to {out}")
    return 1 if any(cell["errors"] for cell in summary["conditions"].values()) else 0


def run(args: argparse.Namespace, console: Console) -> int:
    if args.telemetry_cost:
        return run_telemetry_cost(args, console)
    tools = session.tools_or_none(console, install=not args.no_install)
    if tools is None:
        return 2
    seconds = 5 if args.quick else args.seconds
    rounds = 1 if args.quick else args.rounds
    points = [Point(p.rate, p.connections, seconds) for p in parse_points(args.points)]
    plan = {"rounds": rounds, "seconds": seconds, "points": [p.label for p in points]}
    meta: dict[str, Any] = {"command": session.command_line(),
                            "started_utc": datetime.now(UTC).isoformat(timespec="seconds"), "plan": plan,
                            "host": session.host_facts(), "tools": tools.versions(), "istio": ISTIO}
    workdir = Path(tempfile.mkdtemp(prefix="meshkit-istio-method-"))
    supervisor = Supervisor(workdir)
    mesh: LocalMesh | None = None
    mesh2: LocalMesh | None = None
    try:
        console.print("starting the mesh as shipped: meshkit up --app httpbin --app clients (httpbin-v2=0)")
        mesh, workloads = start_mesh(workdir / "mesh")
        if args.concurrency > 1:
            console.print(f"starting a second mesh, its httpbin and sleep sidecars with concurrency "
                          f"{args.concurrency}")
            second = start_mesh_with_workers(workdir / "mesh2", args.concurrency)
            mesh2, workloads2 = second["mesh"], second["workloads"]
        httpbin, sleep = workloads["httpbin-v1-0"], workloads["sleep-v1-0"]
        stage = Stage(supervisor, tools, workdir)
        children: list[Child]
        children, nginx_port = start_nginx_tls_pair(stage, "nginx-x2-tls", httpbin["app_port"],
                                                    http_probe=False)
        ways = [
            Way("direct", "client -> httpbin app", httpbin["app_port"]),
            Way("mesh", "client -> sleep sidecar -(mTLS)-> httpbin sidecar -> httpbin",
                outbound_port(sleep),
                [sleep["sidecar_pid"], httpbin["sidecar_pid"]], 2),
            Way("nginx-x2-tls", "client -> nginx -(TLS, client certs)-> nginx -> httpbin", nginx_port,
                [child.pid for child in children], 2),
        ]
        if mesh2 is not None:
            httpbin2, sleep2 = workloads2["httpbin-v1-0"], workloads2["sleep-v1-0"]
            ways.insert(2, Way(
                f"mesh-c{args.concurrency}",
                f"as mesh, both sidecars --concurrency {args.concurrency} (a second mesh, its own httpbin)",
                int(sleep2["outbound_proxy"].rsplit(":", 1)[1]),
                [sleep2["sidecar_pid"], httpbin2["sidecar_pid"]], 2,
            ))
        for way in ways:
            check_way(way)
        access_log = mesh.log_path("httpbin-v1-0", sidecar=True, access=True)
        log_before = _size(access_log)
        mtls_before = mtls_requests(httpbin["admin_port"])
        started = time.monotonic()
        samples = run_rounds(ways, points, rounds, console)
        if args.max_seconds:
            meta["ceilings"] = ceilings(ways, Wrk.prepare(tools.wrk, workdir), args.max_seconds, console)
        meta["measured_seconds"] = round(time.monotonic() - started, 1)
        meta["host"]["loadavg_at_end"] = list(os.getloadavg())
        meta["mesh_as_shipped"] = {
            "mtls_requests_reported_by_httpbin_sidecar": mtls_requests(httpbin["admin_port"]) - mtls_before,
            "access_log_bytes_written": _size(access_log) - log_before,
        }
    except (HarnessError, LoadError) as exc:
        console.print(f"[red]benchmark aborted: {exc}[/]")
        return 1
    finally:
        if mesh is not None:
            mesh.down()
        if mesh2 is not None:
            mesh2.down()
        supervisor.close()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    table = summarize(samples, ways)
    checks = verdicts(table, meta.get("ceilings"))
    render(console, table, checks)
    shipped = meta["mesh_as_shipped"]
    console.print(f"mesh as shipped: {shipped['mtls_requests_reported_by_httpbin_sidecar']:.0f} requests "
                  f"reported as mutual_tls by httpbin's sidecar, {shipped['access_log_bytes_written']} bytes "
                  "of access log")
    busiest = max(s.loadavg_1m for s in samples)
    if busiest > (os.cpu_count() or 1):
        meta["warning"] = f"the machine was busy: 1-minute load average up to {busiest}"
        console.print(f"[yellow]{meta['warning']}: latencies carry other processes' noise[/]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw = [{"way": s.way, "point": s.point.label, "round": s.round, **s.result.summary(),
            "cpu_seconds": s.cpu_seconds, "rss_per_proxy": s.rss_per_proxy, "loadavg_1m": s.loadavg_1m}
           for s in samples]
    document = {"meta": meta, "table": table, "checks": checks, "samples": raw}
    args.out.write_text(json.dumps(document, indent=2))
    console.print(f"results written to {args.out}")
    failed = sum(cell["errors"] for cells in table.values() for cell in cells.values())
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return session.main(lambda console: run(args, console))


if __name__ == "__main__":
    sys.exit(main())
