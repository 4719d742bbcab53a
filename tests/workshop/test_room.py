"""A room of attendees against a real server: 50 concurrent clients, the board, SSE, instructor actions."""

from __future__ import annotations

import asyncio
import csv
import json
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.workshop import client, live
from meshkit.workshop.server import RunningWorkshop, run_workshop
from tests.workshop.conftest import board, executor, in_thread, instructor, join

LAB = "02-canary"
STEPS = ["apply-v1", "shift-10", "shift-50", "promote", "cleanup"]
ROOM = 50


def _expected(index: int) -> tuple[int, str]:
    """Attendee ``index`` passes the first ``index % 5`` steps and fails the next one (if any)."""
    passed = index % len(STEPS)
    return passed, f"attendee {index}: reviews-v3 got 0% of traffic"


def _attend(url: str, code: str, index: int, state_dir: Path, start: threading.Barrier) -> client.Attendee:
    attendee = client.join(url, code, f"attendee {index:02d}", state_dir=state_dir)
    attendee.outline(LAB, STEPS)
    start.wait(timeout=30)
    passed, reason = _expected(index)
    delivered = [attendee.report(LAB, step, passed=True) for step in STEPS[:passed]]
    if passed < len(STEPS):
        delivered.append(attendee.report(LAB, STEPS[passed], passed=False, reason=reason))
    assert all(delivered), attendee.last_error
    return attendee


async def _first_board_with(http: aiohttp.ClientSession, running: RunningWorkshop, wanted: int,
                            deadline: float) -> dict[str, Any]:
    """Follow the SSE stream until a board shows ``wanted`` finished results (bounded in time)."""
    async with http.get(f"{running.url}/api/instructor/events", headers=instructor(running)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        event, last = "", {}
        while time.monotonic() < deadline:
            line = (await asyncio.wait_for(response.content.readline(), deadline - time.monotonic()))
            text = line.decode().rstrip("\n")
            if text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith("data:") and event in ("board", "patch"):
                data = json.loads(text[5:])
                last = data if event == "board" else live.apply_patch(last, data)
                done = sum(cell is not None for row in last["attendees"] for cell in row["cells"])
                if done == wanted:
                    return last
        raise AssertionError(f"no board with {wanted} results within the deadline; last: {last}")


async def test_fifty_attendees_report_concurrently_and_the_board_reflects_it(
        workshop: RunningWorkshop, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    code = workshop.store.workshop.join_code
    start = threading.Barrier(ROOM)
    wanted = sum(min(_expected(i)[0] + 1, len(STEPS)) for i in range(ROOM))
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    watcher = asyncio.create_task(_first_board_with(http, workshop, wanted, started + 45))
    with executor(ROOM) as pool:
        attendees = await asyncio.gather(*(
            loop.run_in_executor(pool, _attend, workshop.url, code, i, tmp_path / f"a{i}", start)
            for i in range(ROOM)))
    elapsed = time.monotonic() - started
    live = await watcher  # the SSE stream saw the final state without anyone asking
    state = await board(workshop, http)
    rows = {row["id"]: row for row in state["attendees"]}
    assert sorted(row["name"] for row in rows.values()) == [f"attendee {i:02d}" for i in range(ROOM)]
    assert state["columns"] == [[LAB, step] for step in STEPS]
    for index, attendee in enumerate(attendees):
        row = rows[attendee.id]
        assert row["name"] == attendee.name == f"attendee {index:02d}"
        passed, reason = _expected(index)
        assert row["passed"] == passed
        for position, cell in enumerate(row["cells"]):
            if position < passed:
                assert cell[0] == "p", (index, position, cell)
            elif position == passed:
                assert cell[0] == "f" and cell[1] == reason and cell[3] == 1, (index, cell)
            else:
                assert cell is None, (index, position, cell)
    assert live["attendees"] == [{**row, "last_seen": live_row["last_seen"]}
                                 for row, live_row in zip(state["attendees"], live["attendees"], strict=True)]
    # 10 attendees are failing on each step; 40 passed the first, 30 the second...
    hardest = {item["step"]: item for item in state["hardest"]}
    assert set(hardest) == set(STEPS)
    assert all(item["failing"] == ROOM // len(STEPS) for item in hardest.values())
    assert [hardest[step]["passed"] for step in STEPS] == [40, 30, 20, 10, 0]
    assert len(state["stuck"]) == 10
    assert all(item["reason"].endswith("0% of traffic") for item in state["stuck"])
    assert sum(state["timeline"]["passes"]) == sum(_expected(i)[0] for i in range(ROOM))
    assert sum(state["timeline"]["fails"]) == ROOM
    print(f"\n50 attendees joined and reported {wanted} results in {elapsed:.2f} s")


async def test_stuck_longest_first_and_late_results_do_not_rewrite_newer_ones(
        workshop: RunningWorkshop, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    early = await join(workshop, "early", tmp_path / "early")
    late = await join(workshop, "late", tmp_path / "late")
    now = time.time()

    def post(attendee: client.Attendee, *results: dict[str, Any]) -> None:
        status, answer = client._request("POST", f"{workshop.url}/api/attendees/{attendee.id}/results",
                                         {"results": list(results)}, attendee._token)
        assert status == 200, answer

    def result(n: int, step: str, passed: bool, at: float, reason: str = "") -> dict[str, Any]:
        return {"id": f"event-{n:04d}", "lab": LAB, "step": step, "passed": passed, "at": at,
                "reason": reason}

    await in_thread(post, early, result(1, "s1", False, now - 600, "first try"),
                    result(2, "s1", False, now - 300, "still wrong"))
    await in_thread(post, late, result(3, "s1", False, now - 60, "nope"))
    await in_thread(post, late, result(5, "s2", True, now - 10), result(4, "s2", False, now - 20, "older"))
    state = await board(workshop, http)
    assert [item["name"] for item in state["stuck"]] == ["early", "late"]
    assert state["stuck"][0]["since"] == now - 600 and state["stuck"][0]["reason"] == "still wrong"
    late_row = state["attendees"][1]
    assert late_row["cells"][state["columns"].index([LAB, "s2"])][0] == "p"  # the older failure came later
    await in_thread(post, late, result(5, "s2", True, now - 10))  # a retried delivery counts once
    csv_rows = [line for line in (await (await http.get(
        f"{workshop.url}/api/instructor/export.csv", headers=instructor(workshop))).text()).splitlines()
        if line.startswith(late.id) and ",s2," in line]
    assert csv_rows and csv_rows[0].split(",")[5:7] == ["2", "1"]  # attempts, failures


async def test_instructor_actions_reach_the_attendees(workshop: RunningWorkshop, http: aiohttp.ClientSession,
                                                      tmp_path: Path) -> None:
    attendee = await join(workshop, "Grace", tmp_path / "grace")
    await in_thread(attendee.report, LAB, "shift-10", False, "0% to v3")
    assert await in_thread(attendee.messages) == []
    assert not await in_thread(attendee.released, LAB, "shift-10")
    headers = instructor(workshop)
    for path, body in (("broadcast", {"text": "Break until 11:00 <b>coffee</b>"}),
                       ("release", {"lab": LAB, "step": "shift-10"}),
                       ("lock", {"lab": "03-mirroring", "locked": True}),
                       ("lock", {"lab": "04-faults", "locked": True}),
                       ("lock", {"lab": "04-faults", "locked": False})):
        async with http.post(f"{workshop.url}/api/instructor/{path}", json=body, headers=headers) as response:
            assert response.status in (200, 201), await response.text()
    view = await in_thread(attendee.refresh, max_age=0)
    assert [m["text"] for m in view["messages"]] == ["Break until 11:00 <b>coffee</b>"]
    assert await in_thread(attendee.released, LAB, "shift-10")
    assert not await in_thread(attendee.released, LAB, "promote")
    assert await in_thread(attendee.locked, "03-mirroring")
    assert not await in_thread(attendee.locked, "04-faults")
    release = f"{workshop.url}/api/instructor/release"
    async with http.post(release, json={"lab": LAB}, headers=headers) as response:
        assert response.status == 200
    assert await in_thread(lambda: attendee.refresh(max_age=0) and attendee.released(LAB, "promote"))

    async with http.post(f"{workshop.url}/api/instructor/attendees/{attendee.id}/reset",
                         headers=headers) as response:
        assert response.status == 200
    state = await board(workshop, http)
    assert state["attendees"][0]["cells"] == [None] and state["stuck"] == []
    assert await in_thread(attendee.report, LAB, "shift-10", True)  # progress after a reset counts again
    state = await board(workshop, http)
    assert state["attendees"][0]["passed"] == 1
    nobody = f"{workshop.url}/api/instructor/attendees/a-nobody/reset"
    async with http.post(nobody, headers=headers) as response:
        assert response.status == 404 and "a-nobody" in (await response.json())["error"]
    kinds = [item["kind"] for item in state["feed"]]
    assert {"join", "fail", "pass", "broadcast", "release", "lock", "unlock", "reset"} <= set(kinds)


async def test_csv_export_has_every_attendee_and_step_and_defuses_formulas(
        workshop: RunningWorkshop, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    ada = await join(workshop, "Ada, Countess", tmp_path / "ada")
    evil = await join(workshop, "=HYPERLINK(\"http://x\")", tmp_path / "evil")
    await in_thread(ada.outline, LAB, ["s1", "s2"])
    await in_thread(ada.report, LAB, "s1", True)
    await in_thread(evil.report, LAB, "s2", False, "-1 replicas")
    export = f"{workshop.url}/api/instructor/export.csv"
    async with http.get(export, headers=instructor(workshop)) as response:
        assert response.status == 200 and response.content_type == "text/csv"
        assert "attachment" in response.headers["Content-Disposition"]
        text = await response.text()
    rows = list(csv.DictReader(text.splitlines()))
    assert [(r["name"], r["step"], r["status"]) for r in rows] == [
        ("Ada, Countess", "s1", "passed"), ("Ada, Countess", "s2", "not started"),
        ("'=HYPERLINK(\"http://x\")", "s1", "not started"), ("'=HYPERLINK(\"http://x\")", "s2", "failing")]
    assert rows[3]["last_reason"] == "'-1 replicas" and rows[0]["passed_at"].endswith("+00:00")


async def test_a_step_that_fails_after_passing_is_regressed_and_revealed_solutions_show(
        workshop: RunningWorkshop, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Progress is state: pass then fail shows ``r`` (regressed), not a stale tick; a revealed
    solution is listed once per attendee and step (a retried delivery counts once)."""
    learner = await join(workshop, "learner", tmp_path / "learner")
    results_url = f"{workshop.url}/api/attendees/{learner.id}/results"
    other = await join(workshop, "other", tmp_path / "other")
    await in_thread(learner.outline, LAB, STEPS)
    assert await in_thread(learner.report, LAB, "apply-v1", True)
    assert await in_thread(learner.report, LAB, "apply-v1", False, "the VirtualService is gone")
    assert await in_thread(other.report, LAB, "apply-v1", False, "not yet")
    assert await in_thread(learner.report, LAB, "shift-10", False, kind="solution")
    status, answer = await in_thread(client._request, "POST", results_url,
                                     {"results": [{"id": "solution-0001", "lab": LAB, "step": "shift-10",
                                                   "passed": False, "kind": "solution"}]}, learner._token)
    assert status == 200 and answer == {"accepted": 0, "duplicates": 1}
    state = await board(workshop, http)
    column = state["columns"].index([LAB, "apply-v1"])
    rows = {row["name"]: row for row in state["attendees"]}
    assert rows["learner"]["cells"][column][:2] == ["r", "the VirtualService is gone"]
    assert rows["other"]["cells"][column][0] == "f"
    assert rows["learner"]["passed"] == 0
    assert [(s["name"], s["lab"], s["step"]) for s in state["solutions"]] == [("learner", LAB, "shift-10")]
    assert any(item["kind"] == "solution" and item["name"] == "learner" for item in state["feed"])
    status, answer = await in_thread(client._request, "POST", results_url,
                                     {"results": [{"id": "solution-0002", "lab": LAB, "step": "x",
                                                   "passed": False, "kind": "hint"}]}, learner._token)
    assert status == 400 and "results[0].kind" in str(answer)


async def test_a_server_that_owns_the_outlines_keeps_its_columns_and_names_the_valid_ids(
        tmp_path: Path) -> None:
    """``meshkit workshop serve`` passes meshkit's lab catalog: an attendee cannot add or reorder a
    lab's steps, and releasing or locking a lab or step that does not exist is a 404 listing the ids."""
    outlines = {LAB: STEPS, "03-mirroring": ["mirror-100", "mirror-50"]}
    async with await run_workshop("127.0.0.1", 0, tmp_path / "server", outlines=outlines) as running, \
            aiohttp.ClientSession() as http:
        learner = await join(running, "learner", tmp_path / "learner")
        state = await board(running, http)
        assert state["columns"] == [["02-canary", s] for s in STEPS] + [["03-mirroring", "mirror-100"],
                                                                       ["03-mirroring", "mirror-50"]]
        status, answer = await in_thread(client._request, "POST",
                                         f"{running.url}/api/attendees/{learner.id}/outline",
                                         {"lab": LAB, "steps": ["promote", "my-own-step"]}, learner._token)
        assert status == 200 and answer == {"lab": LAB, "steps": STEPS}
        status, answer = await in_thread(client._request, "POST",
                                         f"{running.url}/api/attendees/{learner.id}/outline",
                                         {"lab": "99-mine", "steps": ["x"]}, learner._token)
        assert status == 400 and "labs: 02-canary, 03-mirroring" in str(answer)
        assert (await board(running, http))["columns"] == state["columns"]
        for path, body, expected in (
                ("release", {"lab": LAB, "step": "shift-99"}, "steps: apply-v1, shift-10, shift-50, promote"),
                ("release", {"lab": "99-mine"}, "labs: 02-canary, 03-mirroring"),
                ("lock", {"lab": "99-mine", "locked": True}, "lock.lab: no lab '99-mine'")):
            async with http.post(f"{running.url}/api/instructor/{path}", json=body,
                                 headers=instructor(running)) as response:
                assert response.status == 404 and expected in await response.text()
        async with http.post(f"{running.url}/api/instructor/release", json={"lab": LAB, "step": "shift-10"},
                             headers=instructor(running)) as response:
            assert response.status == 200


async def test_the_instructor_caps_the_room_at_start(tmp_path: Path) -> None:
    async with await run_workshop("127.0.0.1", 0, tmp_path / "server", max_attendees=2) as running:
        await join(running, "first", tmp_path / "first")
        await join(running, "second", tmp_path / "second")
        with pytest.raises(client.WorkshopError, match=r"the workshop is full \(2 attendees\)"):
            await join(running, "third", tmp_path / "third")
    with pytest.raises(ValueError, match=r"max_attendees: expected 1\.\.500, got 0"):
        await run_workshop("127.0.0.1", 0, tmp_path / "other", max_attendees=0)
