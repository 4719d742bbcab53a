"""Who may do what: instructor endpoints need the instructor token, attendees write only their own
progress, bodies are size-limited, bad input is a 400 naming the field, pages carry a strict CSP."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from meshkit.workshop import auth, client
from meshkit.workshop.server import MAX_BODY, RunningWorkshop
from tests.workshop.conftest import bearer, board, in_thread, instructor, join

STATIC = Path(__file__).resolve().parents[2] / "meshkit" / "workshop" / "static"


def _instructor_routes(running: RunningWorkshop) -> list[tuple[str, str]]:
    routes = []
    for route in running.runner.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter", "")
        if path.startswith("/api/instructor/") and route.method != "HEAD":
            routes.append((route.method, path.replace("{attendee}", "a-000000000000")))
    return routes


async def test_every_instructor_endpoint_refuses_without_the_instructor_token(
        workshop: RunningWorkshop, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    routes = _instructor_routes(workshop)
    assert len(routes) >= 7 and ("GET", "/api/instructor/events") in routes
    attendee = await join(workshop, "Mallory", tmp_path / "mallory")
    wrong = workshop.store.workshop.instructor_token[:-2] + "xx"
    for method, path in routes:
        basic = {"Authorization": "Basic " + workshop.store.workshop.instructor_token}
        cases = (({}, 401), (bearer(wrong), 403), (bearer(attendee._token), 403), (basic, 401))
        for headers, expected in cases:
            async with http.request(method, workshop.url + path, headers=headers,
                                    json={"text": "hi", "lab": "x", "locked": True}) as response:
                assert response.status == expected, (method, path, headers, await response.text())
                assert "error" in await response.json()
    state = await board(workshop, http)  # nothing happened
    assert state["messages"] == [] and state["labs"] == []


async def test_an_attendee_cannot_write_or_read_another_attendees_progress(
        workshop: RunningWorkshop, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    alice = await join(workshop, "alice", tmp_path / "alice")
    bob = await join(workshop, "bob", tmp_path / "bob")
    event = {"id": "forged-000001", "lab": "02-canary", "step": "s1", "passed": True, "at": 1.0}
    for method, suffix in (("POST", "/results"), ("POST", "/outline"), ("GET", "/view"), ("GET", "")):
        async with http.request(method, f"{workshop.url}/api/attendees/{bob.id}{suffix}",
                                headers=bearer(alice._token),
                                json={"results": [event], "lab": "l", "steps": ["s"]}) as response:
            assert response.status == 403, (suffix, await response.text())
        async with http.request(method, f"{workshop.url}/api/attendees/{bob.id}{suffix}",
                                json={"results": [event]}) as response:
            assert response.status == 401
    # naming someone else in the body is refused, not silently re-attributed
    async with http.post(f"{workshop.url}/api/attendees/{alice.id}/results", headers=bearer(alice._token),
                         json={"results": [{**event, "attendee": bob.id}]}) as response:
        assert response.status == 400
        assert (await response.json())["error"].startswith("results[0].attendee: unknown field")
    async with http.post(f"{workshop.url}/api/attendees/{bob.id}/results",
                         headers=bearer("mka_" + "A" * 32), json={"results": [event]}) as response:
        assert response.status == 401
    state = await board(workshop, http)
    assert all(cell is None for row in state["attendees"] for cell in row["cells"])
    assert await in_thread(bob.report, "02-canary", "s1", True)  # bob's own token still works
    state = await board(workshop, http)
    assert {row["name"]: row["passed"] for row in state["attendees"]} == {"alice": 0, "bob": 1}


async def test_joining_needs_the_code_and_a_sane_name(workshop: RunningWorkshop,
                                                     http: aiohttp.ClientSession) -> None:
    url = f"{workshop.url}/api/join"
    code = workshop.store.workshop.join_code
    for body, status, field in (({"code": "ZZZ-999", "name": "x"}, 403, "join.code"),
                                ({"name": "x"}, 400, "join.code"),
                                ({"code": code, "name": ""}, 400, "join.name"),
                                ({"code": code, "name": "x" * 61}, 400, "join.name"),
                                ({"code": code, "name": "a\nb"}, 400, "join.name"),
                                ({"code": code, "name": 7}, 400, "join.name")):
        async with http.post(url, json=body) as response:
            assert response.status == status, (body, await response.text())
            assert (await response.json())["error"].startswith(field), body
    async with http.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400 and "join: the body is not valid JSON" in await response.text()
    async with http.post(url, json={"code": code.lower().replace("-", " "), "name": "ok"}) as response:
        assert response.status == 201  # the code as a person types it
        answer = await response.json()
    assert answer["token"].startswith(auth.ATTENDEE_PREFIX)
    row = workshop.store.rows("SELECT token_digest FROM attendees WHERE id = ?", (answer["attendee_id"],))
    assert row == [(auth.digest(answer["token"]),)]  # only the digest is stored


@pytest.mark.parametrize("path", ["/api/join", "/api/instructor/broadcast", "/api/attendees/{id}/results"])
async def test_request_bodies_are_size_limited(workshop: RunningWorkshop, http: aiohttp.ClientSession,
                                               tmp_path: Path, path: str) -> None:
    attendee = await join(workshop, "big", tmp_path / "big")
    headers = bearer(attendee._token) if "attendees" in path else instructor(workshop)
    body = b'{"text": "' + b"x" * (MAX_BODY + 10) + b'"}'
    async with http.post(workshop.url + path.format(id=attendee.id), data=body,
                         headers={**headers, "Content-Type": "application/json"}) as response:
        assert response.status == 413, await response.text()
    async def chunks():  # no Content-Length: the limit holds for a streamed body too
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024
    url = workshop.url + path.format(id=attendee.id)
    async with http.post(url, data=chunks(), headers=headers) as response:
        assert response.status == 413


async def test_bad_results_are_refused_with_the_field_named(
        workshop: RunningWorkshop, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    attendee = await join(workshop, "typo", tmp_path / "typo")
    ok = {"id": "event-000001", "lab": "l", "step": "s", "passed": True}
    cases = (({**ok, "passed": "yes"}, "results[0].passed"), ({**ok, "id": "x"}, "results[0].id"),
             ({**ok, "lab": ""}, "results[0].lab"), ({**ok, "reason": "r" * 2001}, "results[0].reason"),
             ({**ok, "at": "now"}, "results[0].at"), ({**ok, "at": 0}, "results[0].at"))
    for result, field in cases:
        async with http.post(f"{workshop.url}/api/attendees/{attendee.id}/results",
                             headers=bearer(attendee._token), json={"results": [result]}) as response:
            assert response.status == 400
            assert (await response.json())["error"].startswith(field + ":"), result
    async with http.post(f"{workshop.url}/api/instructor/release", headers=instructor(workshop),
                         json={"step": "s"}) as response:
        assert response.status == 400 and (await response.json())["error"].startswith("release.lab:")


async def test_pages_carry_a_strict_content_security_policy(workshop: RunningWorkshop,
                                                            http: aiohttp.ClientSession) -> None:
    for path in ("/dashboard", "/static/dashboard.js", "/api/instructor/state"):
        async with http.get(workshop.url + path) as response:
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    async with http.get(workshop.url + "/static/../storage.py") as response:
        assert response.status == 404
    page = (STATIC / "dashboard.html").read_text()
    assert "<script>" not in page and not re.search(r"\son\w+=", page)  # no inline script or handlers
    script = (STATIC / "dashboard.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)


def test_secrets_compare_in_constant_time_and_codes_normalize() -> None:
    assert auth.same_secret("mki_abc", "mki_abc") and not auth.same_secret("mki_abc", "mki_abd")
    assert not auth.same_secret("mki_abc", "mki_abcd")
    assert auth.normalize_code("abc 234") == "ABC-234" and auth.normalize_code("ABC-234") == "ABC-234"
    assert len({auth.new_join_code() for _ in range(20)}) > 1
    assert auth.bearer_token("Bearer  t ") == "t" and auth.bearer_token("Basic t") is None


def test_state_dirs_and_databases_are_private_even_when_the_directory_existed(tmp_path: Path) -> None:
    import stat  # noqa: PLC0415

    from meshkit.workshop.storage import DATABASE_FILE, WorkshopStore  # noqa: PLC0415

    server_dir, attendee_dir = tmp_path / "server", tmp_path / "attendee"
    for made in (server_dir, attendee_dir):
        made.mkdir(mode=0o755)
        made.chmod(0o755)
    store = WorkshopStore(server_dir)
    store.close()
    with client._database(attendee_dir):
        pass
    for directory, database in ((server_dir, DATABASE_FILE), (attendee_dir, client.CLIENT_DB)):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        assert stat.S_IMODE((directory / database).stat().st_mode) == 0o600, database
