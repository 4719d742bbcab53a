"""A simulated room against the workshop server: N attendees, one of them flooding, a live dashboard.

Usage: ``.venv/bin/python benchmarks/classroom_room.py [--attendees 100] [--seconds 60] [--out FILE]``

Starts a real ``meshkit workshop serve`` process (its own state dir, a free port on 127.0.0.1,
the shipped lab catalog as outlines) and, in this process, real HTTP clients (aiohttp):

* ``attendees`` learners join, then each reports a check result every ``--interval`` seconds on
  average (random pass/fail, walking through the catalog's 10 labs); a result that cannot be
  delivered (server down) is kept and sent again, as the notebook client does;
* one more attendee floods: results back to back on one connection, ignoring ``Retry-After``;
* the instructor's dashboard follows ``/api/instructor/events`` (SSE, reconnecting like the page),
  applies patches, and records every frame's kind and size;
* the instructor broadcasts a marker every second; the time from the broadcast request until the
  dashboard's stream shows it is the **dashboard delay** (it includes the stream's 0.25 s settle);
* half way, the server is killed (SIGKILL, a crash) and started again on the same state dir.

At the end every result the server acknowledged (200) must be in ``workshop.db`` (nothing lost
across the crash), and every result sent by a non-flooding attendee must have arrived. Reported:
the dashboard delay (p50/p95/max), bytes per live update (patch and whole board), the whole
board's and the CSV export's size, the flood's 200/429 counts and the board's throttled count,
and the server's CPU (seconds of user+system per second of run) and peak RSS.
Everything binds 127.0.0.1; all loops are bounded in count and time; the server is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from meshkit.lab import catalog
from meshkit.workshop import live

MAX_ATTENDEES = 200
MAX_SECONDS = 600.0
MEASURED_AT = "2 cores shared with other work (numbers are upper bounds for a quiet machine)"


@dataclass
class Server:
    """A ``meshkit workshop serve`` process and what it printed."""

    process: subprocess.Popen[str]
    url: str
    token: str
    code: str
    cpu_seconds: float = 0.0
    peak_rss_kb: int = 0

    def sample(self) -> None:
        """Remember the process's CPU time and peak RSS (read from /proc while it lives)."""
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.cpu_seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kb = int(line.split()[1])


@dataclass
class Room:
    """Everything measured (and counted) during one run."""

    attendees: int
    seconds: float
    interval: float
    sent: int = 0
    acknowledged: int = 0
    flood_sent: int = 0
    flood_accepted: int = 0
    flood_limited: int = 0
    flood_refused_connection: int = 0
    throttled_on_board: int = 0
    frames_board: list[int] = field(default_factory=list)
    frames_patch: list[int] = field(default_factory=list)
    reconnects: int = 0
    markers_sent: int = 0
    marker_delay: list[float] = field(default_factory=list)
    board_bytes: int = 0
    csv_bytes: int = 0
    rows_on_board: int = 0
    lost_acknowledged: int = 0
    never_arrived: int = 0
    restart_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    server_peak_rss_kb: int = 0
    wall_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        def median(values: list[int]) -> int | None:
            return int(statistics.median(values)) if values else None

        def pct(values: list[float], q: float) -> float | None:
            return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 3) if values else None

        return {
            "attendees": self.attendees, "seconds": self.seconds, "results_sent": self.sent,
            "results_acknowledged": self.acknowledged, "lost_acknowledged": self.lost_acknowledged,
            "never_arrived": self.never_arrived,
            "flood": {"sent": self.flood_sent, "accepted": self.flood_accepted,
                      "limited_429": self.flood_limited, "throttled_on_board": self.throttled_on_board},
            "dashboard_delay_s": {"markers": self.markers_sent, "seen": len(self.marker_delay),
                                  "p50": pct(self.marker_delay, 0.5), "p95": pct(self.marker_delay, 0.95),
                                  "max": pct(self.marker_delay, 1.0)},
            "update_bytes": {"patches": len(self.frames_patch),
                             "patch_median": median(self.frames_patch),
                             "patch_max": max(self.frames_patch, default=None),
                             "boards": len(self.frames_board),
                             "board_max": max(self.frames_board, default=None)},
            "board_bytes": self.board_bytes, "csv_bytes": self.csv_bytes,
            "rows_on_board": self.rows_on_board,
            "dashboard_reconnects": self.reconnects, "restart_s": round(self.restart_seconds, 3),
            "server_cpu_s": round(self.server_cpu_seconds, 2),
            "server_cpu_per_s": round(self.server_cpu_seconds / max(self.wall_seconds, 1e-9), 3),
            "server_peak_rss_mb": round(self.server_peak_rss_kb / 1024, 1),
            "wall_s": round(self.wall_seconds, 1),
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(state_dir: Path, port: int, *, attendees: int, timeout: float = 60.0) -> Server:
    """``meshkit workshop serve`` on 127.0.0.1:port; waits for its announcement (bounded)."""
    command = [str(Path(sys.executable).with_name("meshkit")), "workshop", "serve", "--port", str(port),
               "--state-dir", str(state_dir), "--max-attendees", str(attendees + 1)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline and "dashboard" not in seen:
        line = process.stdout.readline()
        if not line:
            break
        key, _, value = line.partition(":")
        seen[key.strip().split()[0] if key.strip() else ""] = value.strip()
    if "dashboard" not in seen:
        process.kill()
        process.wait(10)
        raise RuntimeError(f"the workshop server did not start: {seen}")
    return Server(process, f"http://127.0.0.1:{port}", seen["instructor"], seen["join"])


def stop_server(server: Server, sig: int = signal.SIGTERM) -> None:
    server.sample()
    if server.process.poll() is None:
        os.killpg(server.process.pid, sig)
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(15)
    if server.process.stdout is not None:
        server.process.stdout.close()


class Simulation:
    """One run; ``server`` changes at the restart (same URL, same state dir)."""

    def __init__(self, state_dir: Path, attendees: int, seconds: float, interval: float, seed: int) -> None:
        if not 1 <= attendees <= MAX_ATTENDEES:
            raise ValueError(f"attendees: expected 1..{MAX_ATTENDEES}, got {attendees}")
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds: expected 0 < s <= {MAX_SECONDS:g}, got {seconds}")
        self.state_dir = state_dir
        self.port = free_port()
        self.room = Room(attendees, seconds, interval)
        self.rng = random.Random(seed)
        self.labs = [(name, [step.id for step in spec.steps]) for name in catalog.names()
                     if (spec := catalog.get(name)) is not None]
        self.server = start_server(state_dir, self.port, attendees=attendees)
        self.cpu_before_restart = 0.0
        self.end = 0.0
        self.acked: set[str] = set()
        self.sent_by_room: set[str] = set()
        self.markers: dict[str, float] = {}
        self.seen_markers: set[str] = set()
        self.board: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return self.server.url

    def instructor(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.token}"}

    async def join(self, http: aiohttp.ClientSession, name: str) -> tuple[str, str]:
        for _ in range(50):
            with contextlib.suppress(aiohttp.ClientError):
                body = {"code": self.server.code, "name": name}
                async with http.post(f"{self.url}/api/join", json=body) as r:
                    if r.status == 201:
                        doc = await r.json()
                        return str(doc["attendee_id"]), str(doc["token"])
                    raise RuntimeError(f"join {name}: HTTP {r.status} {await r.text()}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"join {name}: the server did not answer")

    async def attendee(self, http: aiohttp.ClientSession, index: int, who: tuple[str, str]) -> None:
        attendee_id, token = who
        headers = {"Authorization": f"Bearer {token}"}
        rng = random.Random(index)
        pending: list[dict[str, Any]] = []
        steps = [(lab, step) for lab, ids in self.labs for step in ids]
        position = 0
        await asyncio.sleep(rng.uniform(0, self.room.interval))
        while time.monotonic() < self.end:
            lab, step = steps[position % len(steps)]
            passed = rng.random() < 0.7
            position += passed
            event = {"id": uuid.uuid4().hex, "lab": lab, "step": step, "passed": passed,
                     "reason": "" if passed else "reviews-v3 got 0% of 200 requests (expected about 10%)",
                     "at": time.time()}
            self.sent_by_room.add(event["id"])
            self.room.sent += 1
            pending.append(event)
            await self._deliver(http, attendee_id, headers, pending)
            await asyncio.sleep(rng.expovariate(1 / self.room.interval))
        for _ in range(100):  # after the run: what is still pending (server was down) goes now
            if not pending or not await self._deliver(http, attendee_id, headers, pending):
                await asyncio.sleep(0.2)
            if not pending:
                return

    async def _deliver(self, http: aiohttp.ClientSession, attendee_id: str, headers: dict[str, str],
                       pending: list[dict[str, Any]]) -> bool:
        try:
            async with http.post(f"{self.url}/api/attendees/{attendee_id}/results",
                                 json={"results": pending[:100]}, headers=headers) as response:
                if response.status != 200:
                    return False
        except (aiohttp.ClientError, TimeoutError):
            return False
        self.acked.update(event["id"] for event in pending[:100])
        self.room.acknowledged += len(pending[:100])
        del pending[:100]
        return True

    async def flood(self, http: aiohttp.ClientSession, who: tuple[str, str]) -> None:
        attendee_id, token = who
        headers = {"Authorization": f"Bearer {token}"}
        lab, steps = self.labs[0]
        while time.monotonic() < self.end:
            body = {"results": [{"id": uuid.uuid4().hex, "lab": lab, "step": steps[0], "passed": False,
                                 "reason": "flood", "at": time.time()}]}
            self.room.flood_sent += 1
            try:
                async with http.post(f"{self.url}/api/attendees/{attendee_id}/results", json=body,
                                     headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        self.room.flood_accepted += 1
                        self.acked.add(body["results"][0]["id"])
                    elif response.status == 429:
                        self.room.flood_limited += 1
            except (aiohttp.ClientError, TimeoutError):
                self.room.flood_refused_connection += 1
                await asyncio.sleep(0.05)  # the server is restarting

    async def broadcast_markers(self, http: aiohttp.ClientSession) -> None:
        number = 0
        while time.monotonic() < self.end:
            number += 1
            text = f"marker-{number}"
            sent = time.monotonic()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(f"{self.url}/api/instructor/broadcast", json={"text": text},
                                     headers=self.instructor()) as response:
                    if response.status == 201:
                        self.markers[text] = sent
                        self.room.markers_sent += 1
            await asyncio.sleep(1.0)

    async def dashboard(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """Follow the live stream like the page: reconnect after a drop, apply patches."""
        connected = False
        while not stop.is_set():
            try:
                async with http.get(f"{self.url}/api/instructor/events", headers=self.instructor(),
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=30)) as response:
                    if response.status != 200:
                        raise aiohttp.ClientError(f"HTTP {response.status}")
                    self.room.reconnects += connected  # the first connection is not a reconnect
                    connected = True
                    event = ""
                    async for line in response.content:
                        if stop.is_set():
                            return
                        if line.startswith(b"event:"):
                            event = line[6:].strip().decode()
                        elif line.startswith(b"data:"):
                            self._frame(event, line)
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)

    def _frame(self, event: str, line: bytes) -> None:
        now = time.monotonic()
        data = json.loads(line[5:])
        if event == "board":
            self.room.frames_board.append(len(line))
            self.board = data
        elif event == "patch" and self.board:
            self.room.frames_patch.append(len(line))
            self.board = live.apply_patch(self.board, data)
        for message in self.board.get("messages", []):
            text = message["text"]
            if text in self.markers and text not in self.seen_markers:
                self.seen_markers.add(text)
                self.room.marker_delay.append(now - self.markers[text])

    async def sampler(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.server.sample()
            await asyncio.sleep(0.5)

    async def restart_half_way(self) -> None:
        await asyncio.sleep(self.room.seconds / 2)
        started = time.monotonic()
        stop_server(self.server, signal.SIGKILL)  # a crash: only what is on disk survives
        self.cpu_before_restart += self.server.cpu_seconds
        peak = self.server.peak_rss_kb
        self.server = await asyncio.to_thread(start_server, self.state_dir, self.port,
                                              attendees=self.room.attendees)
        self.server.peak_rss_kb = max(self.server.peak_rss_kb, peak)
        self.room.restart_seconds = time.monotonic() - started

    async def run(self) -> Room:
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=self.room.attendees + 16)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            who = await asyncio.gather(*(self.join(http, f"learner {n:03d}")
                                         for n in range(self.room.attendees)))
            flooder = await self.join(http, "flooder")
            stop = asyncio.Event()
            watchers = [asyncio.create_task(self.dashboard(http, stop)),
                        asyncio.create_task(self.sampler(stop))]
            self.end = time.monotonic() + self.room.seconds
            try:
                await asyncio.gather(self.restart_half_way(), self.flood(http, flooder),
                                     self.broadcast_markers(http),
                                     *(self.attendee(http, n, w) for n, w in enumerate(who)))
                await self._settle()
                await self._final_state(http, flooder[0])
            finally:
                stop.set()
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
        self.room.wall_seconds = time.monotonic() - started
        return self.room

    async def _final_state(self, http: aiohttp.ClientSession, flooder: str) -> None:
        async with http.get(f"{self.url}/api/instructor/state", headers=self.instructor()) as response:
            state = await response.read()
            self.room.board_bytes = len(state)
            doc = json.loads(state)
            self.room.rows_on_board = len(doc["attendees"])
            self.room.throttled_on_board = int(doc["throttled"].get(flooder, 0))
        async with http.get(f"{self.url}/api/instructor/export.csv", headers=self.instructor()) as response:
            self.room.csv_bytes = len(await response.read())

    async def _settle(self) -> None:
        """Until the dashboard saw the last marker (bounded): late markers still count."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(self.seen_markers) < len(self.markers):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def finish(self) -> Room:
        """Stop the server (gracefully) and check the database against what was sent."""
        stop_server(self.server)
        self.room.server_cpu_seconds = self.cpu_before_restart + self.server.cpu_seconds
        self.room.server_peak_rss_kb = self.server.peak_rss_kb
        database = f"file:{self.state_dir / 'workshop.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(database, uri=True)) as db:
            stored = {row[0] for row in db.execute("SELECT event_id FROM results")}
        self.room.lost_acknowledged = len(self.acked - stored)
        self.room.never_arrived = len(self.sent_by_room - stored)
        return self.room


def simulate(attendees: int, seconds: float, *, interval: float = 2.0, seed: int = 16,
             state_dir: Path | None = None) -> Room:
    """Run one simulated room (the server is always stopped, also on errors)."""
    with tempfile.TemporaryDirectory(prefix="meshkit-room-") as scratch:
        simulation = Simulation(state_dir or Path(scratch) / "server", attendees, seconds, interval, seed)
        try:
            asyncio.run(simulation.run())
        finally:
            room = simulation.finish()
    return room


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attendees", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=2.0,
                        help="mean seconds between an attendee's results")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "classroom_room.json")
    args = parser.parse_args()
    room = simulate(args.attendees, args.seconds, interval=args.interval)
    summary = {**room.summary(), "machine": MEASURED_AT}
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**summary, "raw": asdict(room)}, indent=2))
    return 0 if room.lost_acknowledged == 0 and room.never_arrived == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
