"""The attendee client on its own: joining, the persisted queue, offline reads, env-based joining."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from meshkit.workshop import client
from meshkit.workshop.server import RunningWorkshop
from tests.workshop.conftest import in_thread, instructor


async def test_join_refusals_are_clear(workshop: RunningWorkshop, tmp_path: Path) -> None:
    with pytest.raises(client.WorkshopError, match=r"refused to join: join.code"):
        await in_thread(client.join, workshop.url, "AAA-AAA", "x", state_dir=tmp_path)
    with pytest.raises(client.WorkshopError, match=r"workshop url 'ftp://x'"):
        client.join("ftp://x", "AAA-AAA", "x", state_dir=tmp_path)
    port = workshop.port
    await workshop.close()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(client.WorkshopError, match=rf"cannot reach the workshop server at {url}"):
        await in_thread(client.join, url, "AAA-AAA", "x", state_dir=tmp_path, timeout=2)
    workshop.runner = _Closed()  # the fixture closes it again


class _Closed:
    async def cleanup(self) -> None:
        return None


async def test_last_known_view_is_served_while_the_server_is_down(workshop: RunningWorkshop, http,
                                                                  tmp_path: Path) -> None:
    attendee = await in_thread(client.join, workshop.url, workshop.store.workshop.join_code, "Lin",
                               state_dir=tmp_path)
    async with http.post(f"{workshop.url}/api/instructor/broadcast", headers=instructor(workshop),
                         json={"text": "Lab 2 starts now"}) as response:
        assert response.status == 201
    assert [m["text"] for m in await in_thread(attendee.messages)] == ["Lab 2 starts now"]
    await workshop.runner.cleanup()
    view = await in_thread(attendee.refresh, max_age=0)
    assert [m["text"] for m in view["messages"]] == ["Lab 2 starts now"]
    assert "unreachable" in (attendee.last_error or "")
    assert await in_thread(attendee.report, "02-canary", "s1", True) is False
    assert attendee.pending() == 1
    attendee.close()


def test_join_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MESHKIT_WORKSHOP_URL", raising=False)
    assert client.join_from_env(state_dir=tmp_path) is None
    monkeypatch.setenv("MESHKIT_WORKSHOP_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MESHKIT_WORKSHOP_CODE", "ABC-234")
    monkeypatch.setenv("JUPYTERHUB_USER", "hub-user")
    with pytest.raises(client.WorkshopError, match="cannot reach"):  # port 9 (discard) is not a workshop
        client.join_from_env(state_dir=tmp_path)


async def test_joined_finds_the_latest_identity(
        workshop: RunningWorkshop, tmp_path: Path) -> None:
    assert client.joined(state_dir=tmp_path) is None
    code = workshop.store.workshop.join_code
    first = await in_thread(client.join, workshop.url, code, "Kim", state_dir=tmp_path)
    second = await in_thread(client.join, workshop.url, code, "Kim (laptop 2)", state_dir=tmp_path)
    found = client.joined(state_dir=tmp_path)
    assert found is not None and (found.id, found.name) == (second.id, "Kim (laptop 2)")
    await in_thread(client.join, workshop.url, code, "Kim", state_dir=tmp_path)  # joining again: from disk
    assert client.joined(state_dir=tmp_path).id == first.id  # type: ignore[union-attr]
    assert len(workshop.store.rows("SELECT id FROM attendees")) == 2

    first.close()
    second.close()


def test_a_server_that_hangs_does_not_hang_the_notebook(tmp_path: Path) -> None:
    """A server that accepts connections and never answers (a frozen VM): after the first timeout the
    client queues without waiting, and reads are served from the last known view."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)  # the kernel completes handshakes; nobody ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        attendee = client.Attendee(url, "a-000000000001", "mka_x", "Kim", state_dir=tmp_path, timeout=1.0)
        started = time.monotonic()
        assert attendee.report("l", "s1", False, "x") is False  # waits one timeout, starts the retrier
        for step in range(20):
            assert attendee.report("l", f"s{step + 2}", True) is False
            assert attendee.released("l", "s1") is False  # one more timeout at most, then the cached view
        elapsed = time.monotonic() - started
        assert attendee.pending() == 21
        attendee.close(timeout=5)
    assert elapsed < 8, f"40 calls took {elapsed:.1f} s: the notebook waited on a dead server"
