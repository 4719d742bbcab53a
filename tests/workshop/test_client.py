"""The attendee client on its own: joining, the persisted queue, offline reads, env-based joining."""

from __future__ import annotations

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
