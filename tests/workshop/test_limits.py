"""Room limits the instructor controls, against a real server: removing an attendee, result rate
limits (429 + Retry-After, counted), idle / half-open connections and dashboards that stop reading."""

from __future__ import annotations

import asyncio
import csv
import io
import socket
from pathlib import Path

import aiohttp
import pytest

from meshkit.workshop import client
from meshkit.workshop.limits import ResultLimiter, RoomLimits
from meshkit.workshop.server import FEED, RunningWorkshop, run_workshop
from tests.waiting import async_wait_until
from tests.workshop.conftest import bearer, board, in_thread, instructor, join

LAB = "02-canary"
OUTLINES = {LAB: ["apply-v1", "shift-10"]}


async def _csv(running: RunningWorkshop, http: aiohttp.ClientSession) -> list[dict[str, str]]:
    async with http.get(f"{running.url}/api/instructor/export.csv", headers=instructor(running)) as response:
        return list(csv.DictReader(io.StringIO(await response.text())))


async def test_a_removed_attendee_stops_counting_and_their_client_is_told(tmp_path: Path,
                                                                         http: aiohttp.ClientSession) -> None:
    async with await run_workshop("127.0.0.1", 0, tmp_path / "server", outlines=OUTLINES,
                                  max_attendees=2) as running:
        ada = await join(running, "Ada", tmp_path / "ada")
        bob = await join(running, "Bob", tmp_path / "bob")
        assert await in_thread(ada.report, LAB, "apply-v1", True)
        assert await in_thread(bob.report, LAB, "apply-v1", True)
        assert await in_thread(bob.report, LAB, "shift-10", False, "no v3 traffic")
        url = f"{running.url}/api/instructor/attendees/{bob.id}/remove"
        async with http.post(url, headers=bearer(ada._token)) as response:  # an attendee may not
            assert response.status == 403
        async with http.post(url, headers=instructor(running)) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"attendee_id": bob.id, "removed": True}
        async with http.post(url, headers=instructor(running)) as response:  # not in the room any more
            assert response.status == 404
            assert "no such attendee" in (await response.json())["error"]

        state = await board(running, http)
        assert [row["name"] for row in state["attendees"]] == ["Ada"]
        assert state["stuck"] == [] and all(h["failing"] == 0 for h in state["hardest"])
        assert sum(state["timeline"]["passes"]) == 1 and sum(state["timeline"]["fails"]) == 0
        assert {item["name"] for item in state["feed"] if item["kind"] in ("pass", "fail")} == {"Ada"}
        assert any(item["kind"] == "remove" and item["name"] == "Bob" for item in state["feed"])
        assert {row["name"] for row in await _csv(running, http)} == {"Ada"}

        # Bob's notebook is told, and stops queueing results that can never count
        assert not await in_thread(bob.report, LAB, "shift-10", True)
        assert bob.removed is not None and "removed from the workshop by the instructor" in bob.removed
        assert bob.last_error == bob.removed and bob.pending() == 0
        assert not await in_thread(bob.report, LAB, "shift-10", True)
        assert bob.pending() == 0
        # the seat is free again: the cap counts the attendees in the room
        await join(running, "Cy", tmp_path / "cy")
    # removal survives a restart
    async with await run_workshop("127.0.0.1", 0, tmp_path / "server", outlines=OUTLINES) as running:
        again = client.Attendee(running.url, bob.id, bob._token, "Bob", state_dir=tmp_path / "bob2")
        assert not await in_thread(again.report, LAB, "apply-v1", True)
        assert again.removed is not None
        assert [row["name"] for row in (await board(running, http))["attendees"]] == ["Ada", "Cy"]


async def test_results_are_rate_limited_per_attendee_with_retry_after_and_counted(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    limits = RoomLimits(results_per_second=0.01, results_burst=3)  # no refill within the test
    async with await run_workshop("127.0.0.1", 0, tmp_path / "server", outlines=OUTLINES,
                                  limits=limits) as running:
        flood = await join(running, "Flood", tmp_path / "flood")
        calm = await join(running, "Calm", tmp_path / "calm")
        statuses, retry_after = [], []
        for i in range(8):
            body = {"results": [{"id": f"{i:032x}", "lab": LAB, "step": "apply-v1", "passed": True,
                                 "reason": "", "at": 1.9e9}]}
            async with http.post(f"{running.url}/api/attendees/{flood.id}/results", json=body,
                                 headers=bearer(flood._token)) as response:
                statuses.append(response.status)
                if response.status == 429:
                    retry_after.append(int(response.headers["Retry-After"]))
                    assert "requests per second" in (await response.json())["error"]
        assert statuses == [200] * 3 + [429] * 5
        assert all(seconds >= 1 for seconds in retry_after)
        # another attendee is not affected
        assert await in_thread(calm.report, LAB, "apply-v1", True)
        state = await board(running, http)
        assert state["throttled"] == {flood.id: 5}
        # the client keeps what it could not deliver and says why
        assert not await in_thread(flood.report, LAB, "shift-10", True)
        assert flood.pending() == 1 and "rate limited" in (flood.last_error or "")
        await in_thread(flood.close)


def test_the_token_bucket_refills_at_its_rate() -> None:
    limiter = ResultLimiter(rate=2.0, burst=2)
    assert limiter.take("a", now=0.0) == 0 and limiter.take("a", now=0.0) == 0
    assert limiter.take("a", now=0.0) == pytest.approx(0.5)
    assert limiter.take("a", now=0.5) == 0  # one token back after 1/rate seconds
    assert limiter.refused == {"a": 1}
    assert ResultLimiter.retry_after(0.2) == "1" and ResultLimiter.retry_after(2.1) == "3"
    with pytest.raises(ValueError, match="results_per_second"):
        RoomLimits(results_per_second=0)


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


async def test_idle_and_half_open_connections_are_closed(tmp_path: Path) -> None:
    limits = RoomLimits(idle_timeout=0.5, body_timeout=0.5)
    async with await run_workshop("127.0.0.1", 0, tmp_path / "server", limits=limits) as running:
        silent = socket.create_connection(("127.0.0.1", running.port))
        half = socket.create_connection(("127.0.0.1", running.port))
        half.sendall(b"POST /api/join HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        for sock in (silent, half):
            sock.setblocking(False)
        try:
            await async_wait_until(lambda: _closed_by_server(silent) and _closed_by_server(half), 30,
                                   "the server to close an idle and a half-sent connection")
        finally:
            silent.close()
            half.close()
        # a body that stops arriving is a 408, not a handler waiting forever
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(b"POST /api/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"code\":")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 30)
        assert status.startswith(b"HTTP/1.1 408"), status
        writer.close()


async def test_a_dashboard_that_stops_reading_is_dropped_and_others_stay_live(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    limits = RoomLimits(stream_write_timeout=0.5, stream_send_buffer=4096)
    outlines = {f"lab-{n}": [f"step-{s}" for s in range(6)] for n in range(10)}
    async with await run_workshop("127.0.0.1", 0, tmp_path / "server", outlines=outlines,
                                  limits=limits) as running:
        for n in range(100):  # a big board: every update is tens of kB
            running.store.add_attendee(f"attendee {n:03d}")
        token = running.store.workshop.instructor_token
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", running.port))
        stalled.sendall(f"GET /api/instructor/events HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Bearer {token}\r\n\r\n".encode())  # and never reads
        feed = running.runner.app[FEED]
        await async_wait_until(lambda: feed.streams == 1, 30, "the stalled dashboard's stream")
        seen: list[bytes] = []

        async def follow(live: aiohttp.ClientResponse) -> None:
            async for line in live.content:  # a dashboard that keeps reading
                if line.startswith(b"data:"):
                    seen.append(line)

        def shown(text: str) -> bool:
            return any(f'"text":"{text}"'.encode() in line for line in seen[-2:])

        async def broadcast(text: str) -> None:
            async with http.post(f"{running.url}/api/instructor/broadcast", json={"text": text},
                                 headers=instructor(running)) as response:
                assert response.status == 201

        async with http.get(f"{running.url}/api/instructor/events", headers=instructor(running)) as live:
            reader = asyncio.create_task(follow(live))
            await async_wait_until(lambda: feed.streams == 2 and seen, 30, "the live dashboard's stream")
            sent = 0

            async def change_until_dropped() -> bool:
                nonlocal sent
                if feed.streams == 1:
                    return True
                sent += 1
                await broadcast(f"m{sent}")
                # one board update per change: wait until the live dashboard shows it
                await async_wait_until(lambda: shown(f"m{sent}"), 30, f"broadcast m{sent} on the board")
                return False

            await async_wait_until(change_until_dropped, 120, "the stalled stream to be dropped")
            assert sent >= 1
            # the live one still gets every update
            await broadcast("after")
            await async_wait_until(lambda: shown("after"), 30, "the live dashboard to stay live")
            reader.cancel()
        stalled.close()


def test_a_live_update_after_one_result_is_one_row_with_100_attendees_x_10_labs(tmp_path: Path) -> None:
    from meshkit.control import sse  # noqa: PLC0415
    from meshkit.lab import catalog  # noqa: PLC0415
    from meshkit.workshop import board, events, live  # noqa: PLC0415
    from meshkit.workshop.storage import WorkshopStore  # noqa: PLC0415

    store = WorkshopStore(tmp_path / "server")
    labs = {name: [step.id for step in spec.steps] for name in catalog.names()[:10]  # the figure's 10 labs
            if (spec := catalog.get(name)) is not None}
    assert len(labs) == 10
    for lab, steps in labs.items():
        store.set_outline(lab, steps)
    ids = [store.add_attendee(f"attendee {n:03d}")[0].id for n in range(100)]
    for n, attendee in enumerate(ids):
        store.record_results(attendee, [events.new_result(lab, step, (n + i) % 5 != 0, "v3 got 0% of traffic")
                                        for lab, steps in labs.items() for i, step in enumerate(steps)])
    cache = board.BoardCache(store)
    before = cache.get()
    lab, steps = next(iter(labs.items()))
    store.record_results(ids[42], [events.new_result(lab, steps[0], True)])
    after = cache.get()
    patch = live.board_patch(before, after)
    assert patch is not None and [row["id"] for row in patch["rows"]] == [ids[42]]
    assert live.apply_patch(before, patch) == after
    whole, small = len(sse.frame("board", after)), len(sse.frame("patch", patch))
    assert small * 10 < whole, (small, whole)  # figures for 100 x 10 in benchmarks/README.md
    # a new attendee changes the row list: the whole board goes out again
    store.add_attendee("late")
    assert live.board_patch(after, cache.get()) is None
    store.close()
