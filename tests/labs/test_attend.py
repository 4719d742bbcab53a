"""A joined learner's Lab reports to a real workshop server; released solutions unlock; broadcasts show."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from meshkit.lab import Lab, attend
from meshkit.lab.checks import CheckFailed
from meshkit.lab.mesh import Mesh
from meshkit.workshop.server import run_workshop
from tests.waiting import async_wait_until


def _fail(_mesh: Mesh) -> None:
    raise CheckFailed("reviews-v3 got 0% of 40 requests")


def _learner_session(url: str, code: str) -> tuple[Lab, list[str]]:
    attend.join(url, code, "Ada")
    lab = Lab("02-canary", Mesh("http://127.0.0.1:9"))  # the checks below never call the mesh
    assert lab.room is not None
    ok = lab.step("apply", "apply", check=lambda m: None, retry_for=0, solution="SOLUTION-A")
    bad = lab.step("shift", "shift", check=_fail, retry_for=0, solution="SOLUTION-B")
    results = [str(ok.check()), str(bad.check())]
    hidden = str(bad.solution(reveal=True))
    return lab, [*results, hidden]


async def test_a_joined_lab_reports_checks_and_follows_releases_and_broadcasts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MESHKIT_INSTRUCTOR", raising=False)
    monkeypatch.delenv("MESHKIT_WORKSHOP_URL", raising=False)
    running = await run_workshop("127.0.0.1", 0, tmp_path / "server", title="lab test")
    try:
        code = running.store.workshop.join_code
        lab, said = await asyncio.to_thread(_learner_session, running.url, code)
        assert "passed" in said[0] and "not yet" in said[1]
        assert "SOLUTION-B" not in said[2] and attend.RELEASE_LATER in said[2]
        headers = {"Authorization": f"Bearer {running.store.workshop.instructor_token}"}
        async with aiohttp.ClientSession() as http, \
                http.get(f"{running.url}/api/instructor/state", headers=headers) as resp:
            state = json.dumps(await resp.json())
        assert "Ada" in state and "reviews-v3 got 0% of 40 requests" in state and "shift" in state
        running.store.release("02-canary", "shift")
        running.store.broadcast("Break until <b>10:30</b>")
        assert lab.room is not None

        def after_release() -> tuple[str, str]:
            lab.room.who.refresh(max_age=0)
            widget = lab.progress()
            return str(lab.steps["shift"].solution(reveal=True)), widget.children[0].value

        solution, banner = await asyncio.to_thread(after_release)
        assert "SOLUTION-B" in solution
        assert "Break until &lt;b&gt;10:30&lt;/b&gt;" in banner

        def next_lab() -> str:  # the next lab (another Lab, as a new notebook) does not repeat it
            later = Lab("t-next-lab", Mesh("http://127.0.0.1:9"))
            later.step("s", "s", check=lambda m: None)
            assert later.room is not None
            later.room.who.refresh(max_age=0)
            return str(later.progress().children[0].value)

        assert "Break until" not in await asyncio.to_thread(next_lab)
        running.store.broadcast("Lunch")
        assert "Lunch" in await asyncio.to_thread(next_lab)

        # pushed: an open progress widget shows a new broadcast without the learner running anything
        shown = await asyncio.to_thread(lab.progress)
        stop = lab.room.watch(shown.children[0], every=0.2)  # the watcher progress() started, faster
        running.store.broadcast("Back in 5 minutes")
        await async_wait_until(lambda: "Back in 5 minutes" in shown.children[0].value, 20,
                               "the broadcast to show in the open progress widget")
        stop.set()
        assert "Instructor: Back in 5 minutes" in shown.children[0].value
    finally:
        await running.close()


def test_without_a_workshop_a_lab_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MESHKIT_WORKSHOP_URL", raising=False)
    monkeypatch.setenv("MESHKIT_INSTRUCTOR", "0")  # restored after the test, whatever instructor() sets
    lab = Lab("00-welcome", Mesh("http://127.0.0.1:9"))
    assert lab.room is None and lab.listeners == [] and lab.solution_lock is None
    attend.instructor()
    step = lab.step("s", "s", check=lambda m: None, solution="ANSWER")
    assert "ANSWER" in str(step.solution())
    attend.instructor(False)
    assert "ANSWER" not in str(step.solution())
