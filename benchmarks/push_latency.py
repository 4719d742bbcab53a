"""How long from `meshkit apply` until every sidecar has ACKed the new snapshot?

Usage: ``.venv/bin/python benchmarks/push_latency.py [--subscribers 10,100] [--rounds 30] [--out FILE]
[--traffic 1000x16]``

Starts a real control plane process (``meshkit control --port 0``) in a temporary state dir,
registers the Bookinfo services with one endpoint per subscriber, and opens N real SSE
subscribers (``GET /api/v1/xds/stream``) spread over six workloads (so one change costs six
compiles, not one). Each subscriber ACKs every snapshot it gets, as a sidecar does. Then, per
round, it applies a changed VirtualService (reviews weights) and measures, from the start of the
apply request:

* ``ack_sent``: until each subscriber sends its ACK (measured in this process);
* ``ack_received``: until the control plane recorded the ACK (its ``last_response_at``, same clock).

Subscribers speak HTTP over raw asyncio streams, like the sidecar's xDS client, and read only the
snapshot's version and revision (the first bytes of the event), so the numbers are the control
plane's, not this harness's HTTP client or JSON parsing. Prints p50/p99/max per N and
writes JSON (default benchmarks/results/push_latency.json). Every process it starts is stopped.

``--traffic RATExCONNECTIONS`` measures "while the mesh serves traffic" (the data-plane issue's
push target): instead of a bare control plane it starts the mesh as shipped (``meshkit up --app
httpbin --app clients``, ``proxybench/shipped.py``), joins the N subscribers to *its* control plane
(which also pushes to the real sidecars), and runs an open-loop client in a child process
(``proxybench/background_load.py``) through sleep's sidecar -(mTLS)-> httpbin's sidecar -> httpbin
for the whole measurement; what that client achieved (rate, errors, latency) is reported beside
the push figures, so a run whose traffic did not flow says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from proxybench.background_load import BackgroundLoad
from proxybench.openloop import Point
from proxybench.shipped import HOST, PATH, outbound_port, start_mesh

from meshkit.control.auth import ensure_admin_token

YAML = {"Content-Type": "application/yaml"}

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "push_latency.json"
WORKLOADS = [("productpage", "v1"), ("details", "v1"), ("reviews", "v1"), ("reviews", "v2"),
             ("reviews", "v3"), ("ratings", "v1")]
ROUND_TIMEOUT = 30.0
_HEAD = re.compile(rb'"version":"(?P<version>[0-9a-f]+)".*?"revision":(?P<revision>\d+)')

DESTINATION_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""


def virtual_service(round_number: int) -> str:
    """The reviews VirtualService with weights that differ every round."""
    v2 = 1 + round_number % 98
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {100 - v2}
    - destination: {{host: reviews, subset: v2}}
      weight: {v2}
"""


class AckBoard:
    """How many subscribers have ACKed each revision; wakes the round when all of them have."""

    def __init__(self, subscribers: int) -> None:
        self.subscribers = subscribers
        self._counts: dict[int, int] = {}
        self._done: dict[int, asyncio.Event] = {}

    def _event(self, revision: int) -> asyncio.Event:
        return self._done.setdefault(revision, asyncio.Event())

    def acked(self, revision: int) -> None:
        self._counts[revision] = self._counts.get(revision, 0) + 1
        if self._counts[revision] == self.subscribers:
            self._event(revision).set()

    async def wait(self, revision: int) -> None:
        await self._event(revision).wait()

    def missing(self, revision: int) -> int:
        return self.subscribers - self._counts.get(revision, 0)


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Subscriber:
    """One sidecar stand-in over raw asyncio streams (as the real sidecar's xDS client is):

    an SSE stream (HTTP/1.1, chunked) and a keep-alive connection for its ACKs. ACKs every
    snapshot and remembers when it sent the ACK and when the control plane answered it.
    """

    proxy_id: str
    board: AckBoard
    token: str = ""  # the bearer token of its stream and ACKs
    acks: dict[int, tuple[float, float]] = field(default_factory=dict)  # revision -> (sent, done)
    task: asyncio.Task[None] | None = None

    async def run(self, host: str, port: int, connected: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        ack_reader, ack_writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET /api/v1/xds/stream?id={self.proxy_id} HTTP/1.1\r\nHost: {host}\r\n"
                         f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n".encode())
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"{self.proxy_id}: stream answered {status!r}")
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # response headers
            connected.set()
            pending = b""
            while True:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    return  # the stream ended
                pending += (await reader.readexactly(size + 2))[:-2]
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    head = _HEAD.search(event, 0, 400)
                    if head is not None:
                        await self._ack(ack_reader, ack_writer, host, head["version"].decode(),
                                        int(head["revision"]))
        finally:
            writer.close()
            ack_writer.close()

    async def _ack(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str,
                   version: str, revision: int) -> None:
        sent = time.perf_counter()
        body = json.dumps({"id": self.proxy_id, "version": version, "status": "ACK"}).encode()
        writer.write(f"POST /api/v1/xds/ack HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {self.token}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"{self.proxy_id}: ACK answered {status!r}")
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        self.acks[revision] = (sent, time.perf_counter())
        self.board.acked(revision)


class ControlPlaneProcess:
    """`meshkit control` in a temporary state dir; ``stop()`` always ends it."""

    def __init__(self, state_dir: str, *, ca: bool = False) -> None:
        self.state_dir = state_dir
        self.ca = ca
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> None:
        env = {**os.environ, "MESHKIT_HOME": self.state_dir, "PYTHONPATH": str(ROOT)}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshkit.cli", "control", "--port", "0", "--ca" if self.ca else "--no-ca",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert self.process.stdout is not None
        line = b""
        for _ in range(50):  # log lines (stderr is merged) may come first
            line = await asyncio.wait_for(self.process.stdout.readline(), 30)
            if b"listening on " in line or not line:
                break
        if b"listening on " not in line:
            rest = await asyncio.wait_for(self.process.stdout.read(), 5)
            raise RuntimeError(f"control plane did not start: {(line + rest).decode(errors='replace')}")
        self.url = line.decode().split("listening on ")[1].split()[0]

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 0.50) * 1000, 2),
            "p99_ms": round(percentile(values, 0.99) * 1000, 2), "max_ms": round(max(values) * 1000, 2),
            "mean_ms": round(statistics.fmean(values) * 1000, 2),
            "samples": len(values)}


async def _post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> Any:
    async with session.post(url, **kwargs) as response:
        if response.status != 200:
            raise RuntimeError(f"POST {url}: HTTP {response.status}: {await response.text()}")
        return await response.json()


@dataclass
class Served:
    """The control plane a run measures: its URL, admin token and pid, and the traffic beside it."""

    url: str
    token: str
    pid: int | None
    load: BackgroundLoad | None = None


@contextlib.asynccontextmanager
async def control_plane(state_dir: str, traffic: Point | None) -> AsyncIterator[Served]:
    """A bare `meshkit control`, or (``traffic``) the mesh as shipped with its load generator ready.

    With traffic, the subscribers join the mesh's own control plane, beside the real sidecars of
    httpbin and sleep that it also pushes to, while an open-loop client sends ``traffic`` through
    sleep's sidecar -(mTLS)-> httpbin's sidecar -> httpbin (started by the caller once connected).
    """
    if traffic is None:
        control = ControlPlaneProcess(state_dir)
        token = ensure_admin_token(Path(state_dir) / "control")  # made first, as `meshkit up` does
        try:
            await control.start()
            yield Served(control.url, token, control.process.pid if control.process else None)
        finally:
            await control.stop()
        return
    mesh, workloads = await asyncio.to_thread(start_mesh, Path(state_dir) / "mesh")
    try:
        record = mesh.record()
        control_process = record.processes.get("control") if record is not None else None
        load = BackgroundLoad(traffic, ("127.0.0.1", outbound_port(workloads["sleep-v1-0"])), PATH, HOST)
        yield Served(mesh.control_url() or "", mesh.admin_token() or "",
                     control_process.pid if control_process is not None else None, load)
    finally:
        await asyncio.to_thread(mesh.down)


async def measure(subscribers: int, rounds: int, warmup: int, traffic: Point | None = None) -> dict[str, Any]:
    """One control plane, ``subscribers`` streams, ``rounds`` measured applies (with ``traffic`` beside)."""
    load_summary: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="meshkit-push-") as state_dir:
        async with control_plane(state_dir, traffic) as served, \
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {served.token}"}) as api:
            url, load = served.url, served.load
            subs: list[Subscriber] = []
            board = AckBoard(subscribers)
            cpu_start: float | None = None
            try:
                for service in sorted({name for name, _ in WORKLOADS}):
                    await _post(api, f"{url}/api/v1/registry/services", json={"name": service, "port": 9080})
                for index in range(subscribers):
                    service, version = WORKLOADS[index % len(WORKLOADS)]
                    instance = f"{service}-{version}-{index}"
                    await _post(api, f"{url}/api/v1/registry/endpoints", json={
                        "instance": instance, "workload": f"{service}-{version}", "service": service,
                        "port": 20000 + index, "labels": {"app": service, "version": version},
                        "app_port": 9080, "service_account": f"bookinfo-{service}"})
                    subs.append(Subscriber(f"{instance}.default", board, token=served.token))
                ids = {sub.proxy_id for sub in subs}
                await _post(api, f"{url}/api/v1/apply", data=DESTINATION_RULE, headers=YAML)
                for sub in subs:
                    connected = asyncio.Event()
                    host, port = url.removeprefix("http://").rsplit(":", 1)
                    sub.task = asyncio.create_task(sub.run(host, int(port), connected))
                    await asyncio.wait_for(connected.wait(), 30)
                if load is not None:
                    await load.start()
                sent_latencies: list[float] = []
                received_latencies: list[float] = []
                apply_latencies: list[float] = []
                for number in range(warmup + rounds):
                    wall_start, start = time.time(), time.perf_counter()
                    result = await _post(api, f"{url}/api/v1/apply", data=virtual_service(number),
                                         headers=YAML)
                    applied = time.perf_counter()
                    revision = result["revision"]
                    waiting = asyncio.ensure_future(board.wait(revision))
                    streams = [sub.task for sub in subs if sub.task is not None]
                    done, _ = await asyncio.wait([waiting, *streams], timeout=ROUND_TIMEOUT,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if waiting not in done:
                        waiting.cancel()
                        for ended in done:
                            ended.result()  # raises what ended the stream
                        raise RuntimeError(f"round {number}: {board.missing(revision)} subscribers never "
                                           f"ACKed revision {revision} within {ROUND_TIMEOUT}s")
                    async with api.get(f"{url}/api/v1/proxy-status") as response:
                        proxies = (await response.json())["proxies"]
                    if number < warmup:
                        continue
                    if cpu_start is None and served.pid is not None:
                        cpu_start = cpu_seconds(served.pid)
                    apply_latencies.append(applied - start)
                    sent_latencies.extend(sub.acks[revision][0] - start for sub in subs)
                    received_latencies.extend(p["last_response_at"] - wall_start for p in proxies
                                              if p["id"] in ids)
                    await asyncio.sleep(0.05)
                cpu_end = cpu_seconds(served.pid) if served.pid is not None else None
                if load is not None:
                    load_summary = await load.stop()
            finally:
                if load is not None and load.running() and load.process is not None:
                    load.process.kill()
                    await load.process.wait()
                for sub in subs:
                    if sub.task is not None:
                        sub.task.cancel()
                await asyncio.gather(*(s.task for s in subs if s.task is not None), return_exceptions=True)
    cpu_per_round = None if cpu_start is None or cpu_end is None else \
        round((cpu_end - cpu_start) / max(1, rounds - 1) * 1000, 1)
    return {"subscribers": subscribers, "rounds": rounds, "workloads": len(WORKLOADS),
            "control_plane_cpu_ms_per_round": cpu_per_round,
            "apply": summary(apply_latencies), "ack_sent": summary(sent_latencies),
            "ack_received": summary(received_latencies), "traffic": load_summary}


def _loop_factory() -> Any:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    return uvloop.new_event_loop


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--subscribers", default="10,100", help="comma-separated N values (%(default)s)")
    parser.add_argument("--rounds", type=int, default=30, help="measured applies per N (%(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured applies first (%(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    parser.add_argument("--traffic", metavar="RATExCONNECTIONS",
                        help="measure on the mesh as shipped while it serves this open-loop load (1000x16)")
    parser.add_argument("--traffic-max-seconds", type=float, default=300.0,
                        help="the longest the load may run per N (%(default)s)")
    args = parser.parse_args(argv)
    args.load = None
    if args.traffic:
        rate, _, connections = args.traffic.partition("x")
        try:
            args.load = Point(float(rate), int(connections), args.traffic_max_seconds)
        except ValueError:
            parser.error(f"--traffic: expected RATExCONNECTIONS like 1000x16, got {args.traffic!r}")
        if args.load.rate <= 0 or args.load.connections < 1 or not 0 < args.load.seconds <= 600:
            parser.error("--traffic needs a positive rate and connections; --traffic-max-seconds 0..600")
    args.counts = [int(n) for n in args.subscribers.split(",") if n]
    if not args.counts or min(args.counts) < 1 or not 1 <= args.rounds <= 1000:
        parser.error("--subscribers needs positive integers and --rounds 1..1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for count in args.counts:
        load_before = os.getloadavg()[0]
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(measure(count, args.rounds, args.warmup, args.load))
        result["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        results.append(result)
        print(f"N={count:<4} rounds={args.rounds}  apply p50 {result['apply']['p50_ms']} ms  |  "
              f"ACK sent p50 {result['ack_sent']['p50_ms']} ms  p99 {result['ack_sent']['p99_ms']} ms  "
              f"max {result['ack_sent']['max_ms']} ms  |  ACK at control plane p50 "
              f"{result['ack_received']['p50_ms']} ms  p99 {result['ack_received']['p99_ms']} ms  |  "
              f"control plane CPU {result['control_plane_cpu_ms_per_round']} ms/round  "
              f"(load {result['load_average_1m'][0]} -> {result['load_average_1m'][1]})", flush=True)
        if result["traffic"] is not None:
            served = result["traffic"]
            print(f"  while serving {served['achieved_rps']} req/s of {served['rate']:g} over "
                  f"{served['connections']} connections through the mesh as shipped (mTLS): "
                  f"{served['completed']} answered, {served['errors']} errors, {served['non_2xx']} non-2xx, "
                  f"p50 {served['p50_us']} us, p99 {served['p99_us']} us", flush=True)
        if max(result["load_average_1m"]) > (os.cpu_count() or 1) * 0.5:
            print("  note: the machine was busy (1-minute load average above half the CPUs); "
                  "expect a noisier tail", flush=True)
    doc = {"benchmark": "push_latency", "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "platform": platform.platform()},
           "target": "p99 < 100 ms at N=100 (apply start -> ACK)"
                     + (f", while the mesh serves {args.traffic}" if args.traffic else ""),
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
