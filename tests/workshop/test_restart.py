"""`meshkit workshop serve` as a real process: what it prints, and a crash mid-workshop loses nothing.

The server is killed with SIGKILL while attendees keep working; their clients queue the results in
their state dirs and deliver them once the server is back on the same port and state dir.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshkit.workshop import client

ROOT = Path(__file__).resolve().parents[2]
ROOM = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(state_dir: Path, port: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start the CLI and read what it announces (bounded: 20 s)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "meshkit.cli", "workshop", "serve", "--port", str(port),
         "--state-dir", str(state_dir), "--title", "Restart drill", "--max-attendees", str(ROOM)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True).start()
    announced: dict[str, str] = {}
    deadline = time.monotonic() + 20
    while "dashboard" not in announced:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            raise AssertionError(f"serve did not announce itself; got {announced}, "
                                 f"exit {process.poll()}") from None
        key, _, value = line.partition(":")
        announced[key.strip()] = value.strip()
    return process, announced


def _board(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/api/instructor/state",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.load(response)
        return result


LAB = "01-request-routing"


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_a_crash_mid_workshop_loses_nothing_and_queued_results_arrive_after_restart(tmp_path: Path) -> None:
    port, state = _free_port(), tmp_path / "server"
    url = f"http://127.0.0.1:{port}"
    first, announced = _serve(state, port)
    try:
        token, code = announced["instructor token"], announced["join code"]
        assert announced["dashboard"] == f"{url}/dashboard#token={token}"
        assert announced["attendees join"].startswith(url)
        attendees = [client.join(url, code, f"learner {i}", state_dir=tmp_path / f"a{i}")
                     for i in range(ROOM)]
        assert announced["room size"] == f"up to {ROOM} attendees"
        with pytest.raises(client.WorkshopError, match=f"the workshop is full \\({ROOM} attendees\\)"):
            client.join(url, code, "one too many", state_dir=tmp_path / "extra")
        assert all(a.report(LAB, "all-v1", True) for a in attendees)
        first.send_signal(signal.SIGKILL)  # a crash, not a clean stop
        first.wait(10)

        for attendee in attendees:  # the room keeps working while the server is down
            assert attendee.report(LAB, "predict-subset", False, "reviews has no VirtualService") is False
            assert attendee.report(LAB, "jason-v2", True) is False
            assert attendee.pending() == 2 and "unreachable" in (attendee.last_error or "")
        again = client.join(url, code, "learner 0", state_dir=tmp_path / "a0")  # a restarted kernel
        assert again.id == attendees[0].id and again.pending() == 2

        second, announced_again = _serve(state, port)
        try:
            assert announced_again["instructor token"] == token and announced_again["join code"] == code
            deadline = time.monotonic() + 30  # the clients' background retries deliver by themselves
            while any(a.pending() for a in attendees) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [a.pending() for a in attendees] == [0] * ROOM
            board = _board(url, token)
            # the server owns the outlines (meshkit's lab catalog): every lab's columns, in order
            assert [LAB, "all-v1"] in board["columns"] and ["00-welcome", "up"] in board["columns"]
            index = [board["columns"].index([LAB, step]) for step in ("all-v1", "predict-subset", "jason-v2")]
            assert index == sorted(index)
            assert sorted(row["name"] for row in board["attendees"]) == [f"learner {i}" for i in range(ROOM)]
            for row in board["attendees"]:
                assert [row["cells"][i][0] for i in index] == ["p", "f", "p"], row
                assert row["cells"][index[1]][1] == "reviews has no VirtualService"
            assert board["title"] == "Restart drill"
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
        finally:
            for attendee in [*attendees, again]:
                attendee.close()
            _stop(second)
    finally:
        _stop(first)
    rows = _count_results(state)
    assert rows == ROOM * 3  # retried deliveries counted once


def _count_results(state: Path) -> int:
    import sqlite3  # noqa: PLC0415 (reading the server's file after it stopped)

    with sqlite3.connect(state / "workshop.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
