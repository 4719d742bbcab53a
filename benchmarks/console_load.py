"""Does the web console slow the control plane's API? 30 open browsers against the same run without.

Usage: ``.venv/bin/python benchmarks/console_load.py [--clients 30] [--refreshes 6] [--samples 40]
[--out FILE]``

Starts a real control plane process (``meshkit control --port 0 --no-ca``) and three real sidecar
processes connected to it (so the telemetry scraper has targets and an apply has proxies to push
to), sends some traffic through them (so the telemetry answers have series), then measures the API
the mesh itself uses, twice in the same run:

* ``alone``: no console open;
* ``console``: ``--clients`` console clients, each doing what an open console tab does on its
  default "Live" setting: load the page once (``/ui/`` and its files), draw the graph, open the
  event stream (``GET /api/v1/events``, held open on its own connection) and redraw the graph
  when a frame says the telemetry or the config changed, at most every 3 s (graph.js
  ``LIVE_GAP_MS``), with the same three calls the page makes (``telemetry?window=60``,
  ``registry``, ``config``, concurrently) on keep-alive connections like a browser.

Measured API answers: ``GET /api/v1/proxy-status`` (the answer's latency) and apply -> SYNCED (a
changed VirtualService applied, then ``history/N/timeline?wait=`` until every proxy ACKed it).
Prints p50/p90/max of each with and without the console and the console's own refresh latency;
writes JSON (default ``benchmarks/results/console_load.json``). ``tests/benchmarks/test_console_load.py``
runs the same scenario small and checks correctness and boundedness, not times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from meshkit.control.auth import ensure_admin_token

sys.path.insert(0, str(Path(__file__).resolve().parent))
from push_latency import ControlPlaneProcess, percentile  # a sibling benchmark

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "console_load.json"
PAGE_FILES = ("", "console.css", "console.js", "graph.js", "config.js", "timeline.js", "wizards.js")
REFRESH_CALLS = ("telemetry?window=60", "registry", "config")  # graph.js refresh(): 3 calls
LIVE_GAP = 3.0  # graph.js LIVE_GAP_MS: the live graph redraws at most this often
REDRAW_ON = (b"telemetry", b"config")  # the stream's frames that redraw the graph
SIDECARS = ("productpage-v1-0.default", "reviews-v1-0.default", "ratings-v1-0.default")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
ROUTE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - timeout: {ms}ms
    route:
    - destination: {{host: reviews}}
"""


@dataclass
class ConsoleClient:
    """One open console tab: the page once, a graph drawn, then redrawn as its event stream says."""

    index: int
    url: str
    headers: dict[str, str]
    refreshes: int
    offset: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    frames: dict[str, int] = field(default_factory=dict)  # event kind -> frames received
    page_bytes: int = 0
    following: asyncio.Event = field(default_factory=asyncio.Event)  # stream open, graph drawn

    async def _get(self, session: aiohttp.ClientSession, path: str) -> int:
        try:
            async with session.get(self.url + path) as response:
                body = await response.read()
                if path.startswith("/api/v1/") and response.status == 200:
                    json.loads(body)  # a console answer must be JSON the page can read
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                return len(body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            self.errors.append(f"{path}: {type(error).__name__}: {error}")
            return 0

    async def _redraw(self, session: aiohttp.ClientSession) -> None:
        began = time.perf_counter()
        await asyncio.gather(*(self._get(session, "/api/v1/" + call) for call in REFRESH_CALLS))
        self.latencies.append(time.perf_counter() - began)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=6)  # a browser's connections per host
        async with aiohttp.ClientSession(headers=self.headers, timeout=REQUEST_TIMEOUT,
                                         connector=connector) as session:
            for name in PAGE_FILES:  # public files: the page loads them without the token
                self.page_bytes += await self._get(session, "/ui/" + name)
            await asyncio.sleep(self.offset)
            try:  # bounded: the redraws it waits for, or this long
                async with asyncio.timeout(self.refreshes * LIVE_GAP + 60):
                    await self._follow(session)
            except (aiohttp.ClientError, TimeoutError) as error:
                self.errors.append(f"events: {type(error).__name__}: {error}")
        self.following.set()

    async def _follow(self, session: aiohttp.ClientSession) -> None:
        async with session.get(self.url + "/api/v1/events", headers={"Accept": "text/event-stream"},
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as stream:
            self.statuses[stream.status] = self.statuses.get(stream.status, 0) + 1
            if stream.status != 200:
                self.errors.append(f"events: HTTP {stream.status}")
                return
            await self._redraw(session)  # the page draws the graph when it opens
            drawn = time.monotonic()
            self.following.set()
            async for line in stream.content:
                if not line.startswith(b"event: "):
                    continue
                kind = line[len(b"event: "):].strip()
                self.frames[kind.decode()] = self.frames.get(kind.decode(), 0) + 1
                if len(self.latencies) >= self.refreshes:
                    return  # the tab closes: its stream's slot must come back
                if kind in REDRAW_ON and time.monotonic() - drawn >= LIVE_GAP:
                    await self._redraw(session)
                    drawn = time.monotonic()


@dataclass
class Mesh:
    """The control plane process, its sidecar processes and a plain upstream they route to."""

    control: ControlPlaneProcess
    token: str
    state_dir: str
    sidecars: list[asyncio.subprocess.Process] = field(default_factory=list)
    ports: dict[str, dict[str, int]] = field(default_factory=dict)
    upstream: asyncio.Server | None = None
    revision_ms: int = 1000

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def start_mesh(state_dir: str) -> Mesh:
    token = ensure_admin_token(Path(state_dir) / "control")
    control = ControlPlaneProcess(state_dir)
    mesh = Mesh(control, token, state_dir)
    await control.start()
    mesh.upstream = await asyncio.start_server(_answer, "127.0.0.1", 0)
    port = mesh.upstream.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession(headers=mesh.headers, timeout=REQUEST_TIMEOUT) as api:
        async with api.post(f"{control.url}/api/v1/registry/services",
                            json={"name": "reviews", "namespace": "default", "port": 9080}) as r:
            assert r.status == 200, await r.text()
        endpoint = {"instance": "reviews-v1-0", "workload": "reviews-v1", "service": "reviews",
                    "namespace": "default", "address": "127.0.0.1", "port": port,
                    "labels": {"app": "reviews", "version": "v1"}, "has_sidecar": False}
        async with api.post(f"{control.url}/api/v1/registry/endpoints", json=endpoint) as r:
            assert r.status == 200, await r.text()
    token_file = Path(state_dir) / "control" / "admin-token"
    for name in SIDECARS:
        ports_file = Path(state_dir) / f"{name}.ports"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshkit.proxy", "--control", control.url, "--id", name,
            "--control-token-file", str(token_file), "--outbound-port", "0", "--inbound-port", "0",
            "--admin-port", "0", "--ports-file", str(ports_file), "--access-log", "off",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        mesh.sidecars.append(process)
        deadline = time.monotonic() + 30
        while not ports_file.exists():
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sidecar {name} did not start")
            await asyncio.sleep(0.05)
        mesh.ports[name] = json.loads(ports_file.read_text())
    await wait_synced(mesh, len(SIDECARS))
    return mesh


async def wait_synced(mesh: Mesh, count: int) -> None:
    async with aiohttp.ClientSession(headers=mesh.headers, timeout=REQUEST_TIMEOUT) as api:
        async with api.get(f"{mesh.control.url}/api/v1/proxy-status?wait=30") as r:
            doc = await r.json()
        if not doc.get("synced") or len(doc["proxies"]) != count:
            raise RuntimeError(f"the sidecars did not all SYNC: {doc}")


async def traffic(mesh: Mesh, requests: int) -> int:
    """``requests`` calls through each sidecar's outbound to reviews: the telemetry gets series."""
    ok = 0
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
        for ports in mesh.ports.values():
            for _ in range(requests):
                async with http.get(f"http://127.0.0.1:{ports['outbound']}/",
                                    headers={"Host": "reviews:9080"}) as r:
                    await r.read()
                    ok += r.status == 200
    return ok


async def stop_mesh(mesh: Mesh) -> None:
    for process in mesh.sidecars:
        if process.returncode is None:
            process.terminate()
    for process in mesh.sidecars:
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
    if mesh.upstream is not None:
        mesh.upstream.close()
    await mesh.control.stop()


async def measure_api(mesh: Mesh, samples: int, applies: int) -> dict[str, Any]:
    """proxy-status latencies and apply -> every proxy ACKed, each sample checked for correctness."""
    status_s: list[float] = []
    apply_s: list[float] = []
    problems: list[str] = []
    url = mesh.control.url
    async with aiohttp.ClientSession(headers=mesh.headers, timeout=REQUEST_TIMEOUT) as api:
        for _ in range(samples):
            began = time.perf_counter()
            async with api.get(f"{url}/api/v1/proxy-status") as r:
                doc = await r.json()
            status_s.append(time.perf_counter() - began)
            if r.status != 200 or len(doc["proxies"]) != len(SIDECARS):
                problems.append(f"proxy-status: HTTP {r.status}, {len(doc.get('proxies', []))} proxies")
            await asyncio.sleep(0.05)
        for _ in range(applies):
            mesh.revision_ms += 1
            began = time.perf_counter()
            async with api.post(f"{url}/api/v1/apply", data=ROUTE.format(ms=mesh.revision_ms),
                                headers={"Content-Type": "application/yaml"}) as r:
                applied = await r.json()
            async with api.get(f"{url}/api/v1/history/{applied['revision']}/timeline?wait=30") as r:
                timeline = await r.json()
            apply_s.append(time.perf_counter() - began)
            acked = [p for p in timeline["proxies"] if p["acked"] is not None]
            if timeline["state"] != "synced" or len(acked) != len(SIDECARS):
                problems.append(f"revision {applied['revision']}: {timeline['state']}, {len(acked)} ACKs")
    return {"proxy_status_s": status_s, "apply_to_synced_s": apply_s, "problems": problems}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def run(clients: int = 30, refreshes: int = 6, samples: int = 40, applies: int = 10) -> dict[str, Any]:
    """The whole scenario in one temporary state dir; every process it starts is stopped."""
    with tempfile.TemporaryDirectory(prefix="meshkit-console-load-") as state_dir:
        mesh = await start_mesh(state_dir)
        try:
            assert mesh.control.process is not None
            pid = mesh.control.process.pid
            served = await traffic(mesh, 30)
            alone = await measure_api(mesh, samples, applies)
            # the descriptors before any tab opens (after the applies, whose store and workers stay)
            fds_before = open_fds(pid)
            rng = random.Random(17)  # tabs opened at different moments of the redraw cycle
            tabs = [ConsoleClient(i, mesh.control.url, mesh.headers, refreshes, rng.uniform(0, LIVE_GAP))
                    for i in range(clients)]
            running = [asyncio.create_task(tab.run()) for tab in tabs]
            await asyncio.wait_for(asyncio.gather(*(t.following.wait() for t in tabs)), 60)  # all following
            loaded = await measure_api(mesh, samples, applies)
            await asyncio.gather(*running)
            for _ in range(300):  # up to 30 s for the server to close the tabs' connections
                if open_fds(pid) <= fds_before + 2:
                    break
                await asyncio.sleep(0.1)
            return {"clients": clients, "refreshes": refreshes, "served": served, "alone": alone,
                    "console": loaded, "tabs": tabs, "fds_before": fds_before, "fds_after": open_fds(pid)}
        finally:
            await stop_mesh(mesh)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 0.5) * 1000, 2),
            "p90_ms": round(percentile(values, 0.9) * 1000, 2), "max_ms": round(max(values) * 1000, 2),
            "samples": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--refreshes", type=int, default=6,
                        help="graph redraws per client (the first, then live: 3 s apart at most)")
    parser.add_argument("--samples", type=int, default=40, help="proxy-status samples per phase")
    parser.add_argument("--applies", type=int, default=10, help="applies per phase")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = asyncio.run(run(args.clients, args.refreshes, args.samples, args.applies))
    tabs: list[ConsoleClient] = result["tabs"]
    refresh = [s for tab in tabs for s in tab.latencies]
    phases = ("alone", "console")
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpus": os.cpu_count(), "load_average": os.getloadavg(), "clients": result["clients"],
        "proxy_status": {phase: summary(result[phase]["proxy_status_s"]) for phase in phases},
        "apply_to_synced": {phase: summary(result[phase]["apply_to_synced_s"]) for phase in phases},
        "console_refresh": summary(refresh),
        "errors": sum(len(t.errors) for t in tabs) + len(result["alone"]["problems"])
        + len(result["console"]["problems"]),
        "page_bytes": tabs[0].page_bytes,
    }
    print(f"{result['clients']} console clients x {result['refreshes']} refreshes, "
          f"load average {report['load_average'][0]:.2f}")
    print(f"{'answer':<22}{'alone p50/p90 ms':>20}{'with console p50/p90 ms':>28}")
    for name in ("proxy_status", "apply_to_synced"):
        a, c = report[name]["alone"], report[name]["console"]
        print(f"{name:<22}{a['p50_ms']:>10}/{a['p90_ms']:<9}{c['p50_ms']:>14}/{c['p90_ms']:<13}")
    print(f"console refresh (3 calls) p50/p90: {report['console_refresh']['p50_ms']}/"
          f"{report['console_refresh']['p90_ms']} ms; errors: {report['errors']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
