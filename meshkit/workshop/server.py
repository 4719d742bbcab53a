"""The instructor server: the aiohttp app (`create_app`), a runner (`run_workshop`) and ``serve``.

Routes (JSON unless said otherwise; tokens as ``Authorization: Bearer``):

- public: ``GET /dashboard`` (the page; it reads the instructor token from the URL fragment, which
  browsers never send to a server), ``GET /static/*``, ``GET /healthz``,
  ``POST /api/join {code, name}`` -> ``{attendee_id, token, name, title}``
- attendee token, own id only: ``GET /api/attendees/{id}``, ``POST /api/attendees/{id}/results
  {results: [...]}``, ``POST /api/attendees/{id}/outline {lab, steps}``,
  ``GET /api/attendees/{id}/view`` (broadcasts, released solutions, locked labs)
- instructor token: everything under ``/api/instructor/``: ``state``, ``events`` (SSE), ``export.csv``,
  ``broadcast {text}``, ``release {lab, step?}``, ``lock {lab, locked}``, ``attendees/{id}/reset``,
  ``attendees/{id}/remove``

Room limits (`limits.RoomLimits`): results are rate limited per attendee (429 with ``Retry-After``,
counted on the board); a removed attendee's token gets 410 ("removed by the instructor"); a
connection with no request for ``idle_timeout`` seconds (including one that sent half a request) is
closed, a body that stops arriving is a 408, and a dashboard that stops reading its live stream is
dropped after ``stream_write_timeout`` seconds (see `live.stream_board`).

A missing token is 401, a wrong one 403, an attendee token on another attendee's path 403. Bodies
are limited to `MAX_BODY` bytes (413). Bad input is a 400 ``{"error": "<resource.field>: <problem>"}``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from meshkit.workshop import auth, board, dashboard, events, export, live
from meshkit.workshop.limits import ResultLimiter, RoomLimits
from meshkit.workshop.storage import WHOLE_LAB, Attendee, WorkshopStore

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 15080
MAX_BODY = 64 * 1024
MAX_ATTENDEES = 500
SHUTDOWN_TIMEOUT = 3.0

STORE: web.AppKey[WorkshopStore] = web.AppKey("store", WorkshopStore)
FEED: web.AppKey[live.ChangeFeed] = web.AppKey("feed", live.ChangeFeed)
BOARD: web.AppKey[board.BoardCache] = web.AppKey("board", board.BoardCache)
OUTLINES: web.AppKey[dict[str, list[str]]] = web.AppKey("outlines", dict)  # empty: attendees announce labs
CAP: web.AppKey[int] = web.AppKey("max_attendees", int)
LIMITS: web.AppKey[RoomLimits] = web.AppKey("limits", RoomLimits)
LIMITER: web.AppKey[ResultLimiter] = web.AppKey("limiter", ResultLimiter)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: type[web.HTTPException], text: str, **headers: str) -> web.HTTPException:
    return status(text=json.dumps({"error": text}), content_type="application/json", headers=headers or None)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except events.InputError as error:
        raise _error(web.HTTPBadRequest, str(error)) from None
    except web.HTTPRequestEntityTooLarge:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY, actual_size=request.content_length or MAX_BODY + 1,
            content_type="application/json",
            text=json.dumps({"error": f"request body: larger than the limit of {MAX_BODY} bytes"})) from None


async def _json(request: web.Request, resource: str) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    try:
        async with asyncio.timeout(request.app[LIMITS].body_timeout):
            body = await request.read()
    except TimeoutError:
        raise _error(web.HTTPRequestTimeout, f"{resource}: the request body stopped arriving") from None
    try:
        return json.loads(body)
    except ValueError:
        raise events.InputError(resource, "the body is not valid JSON") from None


# -- authentication ---------------------------------------------------------------------------------


def _require_instructor(request: web.Request) -> None:
    token = auth.bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise _error(web.HTTPUnauthorized, "this endpoint needs the instructor token",
                     **{"WWW-Authenticate": "Bearer"})
    if not auth.same_secret(token, request.app[STORE].workshop.instructor_token):
        raise _error(web.HTTPForbidden, "the instructor token is not valid")


def _require_attendee(request: web.Request) -> Attendee:
    """The attendee the token belongs to, who must also be the one named in the path."""
    token = auth.bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise _error(web.HTTPUnauthorized, "this endpoint needs an attendee token",
                     **{"WWW-Authenticate": "Bearer"})
    attendee = request.app[STORE].attendee_for_token(token)
    if attendee is None:
        raise _error(web.HTTPUnauthorized, "unknown attendee token: join the workshop again",
                     **{"WWW-Authenticate": "Bearer"})
    if not auth.same_secret(attendee.id, request.match_info["attendee"]):
        raise _error(web.HTTPForbidden, "an attendee token may only read and write its own progress")
    if attendee.removed_at is not None:
        raise _error(web.HTTPGone, f"attendee {attendee.name!r}: removed from the workshop by the "
                                   "instructor; results are no longer accepted")
    return attendee


def _changed(request: web.Request) -> None:
    request.app[FEED].notify()


# -- public -----------------------------------------------------------------------------------------


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def join(request: web.Request) -> web.Response:
    doc = await _json(request, "join")
    if not isinstance(doc, dict):
        raise events.InputError("join", "expected {\"code\": ..., \"name\": ...}")
    code = doc.get("code")
    if not isinstance(code, str) or not code.strip():
        raise events.InputError("join.code", "expected the workshop's join code, e.g. ABC-234")
    name = events.check_name(doc.get("name"))
    store = request.app[STORE]
    if not auth.same_secret(auth.normalize_code(code), store.workshop.join_code):
        raise _error(web.HTTPForbidden, "join.code: this is not the code of this workshop")
    cap = request.app[CAP]
    if store.active_attendees() >= cap:
        raise _error(web.HTTPConflict, f"join: the workshop is full ({cap} attendees)")
    attendee, token = store.add_attendee(name)
    _changed(request)
    return web.json_response({"attendee_id": attendee.id, "name": attendee.name, "token": token,
                              "title": store.workshop.title}, status=201)


# -- attendee ---------------------------------------------------------------------------------------


async def attendee_me(request: web.Request) -> web.Response:
    attendee = _require_attendee(request)
    return web.json_response({"attendee_id": attendee.id, "name": attendee.name})


async def attendee_results(request: web.Request) -> web.Response:
    attendee = _require_attendee(request)
    wait = request.app[LIMITER].take(attendee.id)
    if wait:
        raise _error(web.HTTPTooManyRequests,
                     f"results: more than {request.app[LIMITS].results_per_second:g} requests per second "
                     f"from attendee {attendee.name!r}; try again later",
                     **{"Retry-After": ResultLimiter.retry_after(wait)})
    results = events.parse_results(await _json(request, "results"))
    new, duplicates = request.app[STORE].record_results(attendee.id, results)
    if new:
        _changed(request)
    return web.json_response({"accepted": new, "duplicates": duplicates})


async def attendee_outline(request: web.Request) -> web.Response:
    """A notebook announces its lab's steps. When the server owns the outlines (``outlines`` at
    start: meshkit's lab catalog), a known lab keeps the server's steps — attendees cannot add or
    reorder columns — and an unknown lab is refused with the list of labs."""
    _require_attendee(request)
    lab, steps = events.parse_outline(await _json(request, "outline"))
    owned = request.app[OUTLINES]
    if owned:
        if lab not in owned:
            raise events.InputError("outline.lab",
                                    f"no lab {lab!r} in this workshop (labs: {', '.join(owned)})")
        return web.json_response({"lab": lab, "steps": owned[lab]})
    request.app[STORE].set_outline(lab, steps)
    _changed(request)
    return web.json_response({"lab": lab, "steps": steps})


def _require_known(request: web.Request, lab: str, step: str | None, where: str) -> None:
    """With server-owned outlines, an instructor action on a lab or step that does not exist is a 404
    that lists the valid ids."""
    owned = request.app[OUTLINES]
    if not owned:
        return
    if lab not in owned:
        raise _error(web.HTTPNotFound, f"{where}.lab: no lab {lab!r} (labs: {', '.join(owned)})")
    if step and step not in owned[lab]:
        raise _error(web.HTTPNotFound, f"{where}.step: lab {lab!r} has no step {step!r} "
                                       f"(steps: {', '.join(owned[lab])})")


async def attendee_view(request: web.Request) -> web.Response:
    _require_attendee(request)
    return web.json_response(request.app[STORE].attendee_view())


# -- instructor -------------------------------------------------------------------------------------


async def instructor_state(request: web.Request) -> web.Response:
    _require_instructor(request)
    return web.json_response(request.app[BOARD].get())


async def instructor_events(request: web.Request) -> web.StreamResponse:
    _require_instructor(request)
    limits = request.app[LIMITS]
    return await live.stream_board(request, request.app[FEED], request.app[BOARD].get,
                                   write_timeout=limits.stream_write_timeout,
                                   send_buffer=limits.stream_send_buffer)


async def instructor_export(request: web.Request) -> web.Response:
    _require_instructor(request)
    return web.Response(text=export.progress_csv(request.app[STORE]), content_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="workshop-progress.csv"'})


async def instructor_broadcast(request: web.Request) -> web.Response:
    _require_instructor(request)
    doc = await _json(request, "broadcast")
    text = events.check_message(doc.get("text") if isinstance(doc, dict) else None)
    message_id = request.app[STORE].broadcast(text)
    _changed(request)
    return web.json_response({"id": message_id, "text": text}, status=201)


async def instructor_release(request: web.Request) -> web.Response:
    _require_instructor(request)
    doc = await _json(request, "release")
    if not isinstance(doc, dict):
        raise events.InputError("release", 'expected {"lab": ..., "step": ...} (no step: the whole lab)')
    lab = events.check_id(doc.get("lab"), "release.lab")
    step = WHOLE_LAB if doc.get("step") in (None, "") else events.check_id(doc.get("step"), "release.step")
    _require_known(request, lab, step, "release")
    request.app[STORE].release(lab, step)
    _changed(request)
    return web.json_response({"lab": lab, "step": step or None})


async def instructor_lock(request: web.Request) -> web.Response:
    _require_instructor(request)
    doc = await _json(request, "lock")
    if not isinstance(doc, dict):
        raise events.InputError("lock", 'expected {"lab": ..., "locked": true|false}')
    lab = events.check_id(doc.get("lab"), "lock.lab")
    locked = doc.get("locked", True)
    if not isinstance(locked, bool):
        raise events.InputError("lock.locked", "expected true or false")
    _require_known(request, lab, None, "lock")
    request.app[STORE].set_locked(lab, locked)
    _changed(request)
    return web.json_response({"lab": lab, "locked": locked})


async def instructor_reset(request: web.Request) -> web.Response:
    _require_instructor(request)
    attendee_id = request.match_info["attendee"]
    if not request.app[STORE].reset_attendee(attendee_id):
        raise _error(web.HTTPNotFound, f"attendee {attendee_id!r}: no such attendee")
    _changed(request)
    return web.json_response({"attendee_id": attendee_id, "reset": True})


async def instructor_remove(request: web.Request) -> web.Response:
    """Take an attendee out of the room (their results stop counting; their client gets 410)."""
    _require_instructor(request)
    attendee_id = request.match_info["attendee"]
    if not request.app[STORE].remove_attendee(attendee_id):
        raise _error(web.HTTPNotFound, f"attendee {attendee_id!r}: no such attendee in the room")
    request.app[LIMITER].forget(attendee_id)
    _changed(request)
    return web.json_response({"attendee_id": attendee_id, "removed": True})


# -- the app ----------------------------------------------------------------------------------------


def create_app(store: WorkshopStore, outlines: Mapping[str, Sequence[str]] | None = None,
               max_attendees: int = MAX_ATTENDEES, limits: RoomLimits | None = None) -> web.Application:
    """The server's routes over ``store``; the store stays the caller's to close. ``outlines``
    (lab -> steps in order) makes the server own the labs' columns (see `attendee_outline`);
    ``max_attendees`` caps the room (the instructor sets it at start); ``limits`` the rest."""
    if not 1 <= max_attendees <= MAX_ATTENDEES:
        raise ValueError(f"max_attendees: expected 1..{MAX_ATTENDEES}, got {max_attendees}")
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors_as_json])
    app[STORE] = store
    app[CAP] = max_attendees
    app[LIMITS] = limits = limits or RoomLimits()
    app[LIMITER] = ResultLimiter(limits.results_per_second, limits.results_burst)
    app[OUTLINES] = {lab: list(steps) for lab, steps in (outlines or {}).items()}
    for lab, steps in app[OUTLINES].items():
        store.set_outline(lab, steps)
    app[FEED] = live.ChangeFeed()
    app[BOARD] = board.BoardCache(store, app[LIMITER].refused)
    dashboard.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/join", join)
    app.router.add_get("/api/attendees/{attendee}", attendee_me)
    app.router.add_post("/api/attendees/{attendee}/results", attendee_results)
    app.router.add_post("/api/attendees/{attendee}/outline", attendee_outline)
    app.router.add_get("/api/attendees/{attendee}/view", attendee_view)
    app.router.add_get("/api/instructor/state", instructor_state)
    app.router.add_get("/api/instructor/events", instructor_events)
    app.router.add_get("/api/instructor/export.csv", instructor_export)
    app.router.add_post("/api/instructor/broadcast", instructor_broadcast)
    app.router.add_post("/api/instructor/release", instructor_release)
    app.router.add_post("/api/instructor/lock", instructor_lock)
    app.router.add_post("/api/instructor/attendees/{attendee}/reset", instructor_reset)
    app.router.add_post("/api/instructor/attendees/{attendee}/remove", instructor_remove)

    async def close_streams(app: web.Application) -> None:
        app[FEED].close()  # ends the dashboards' SSE streams so shutdown is prompt

    app.on_shutdown.append(close_streams)
    return app


class RunningWorkshop:
    """A workshop server listening on a socket; ``await close()`` (or ``async with``) stops it."""

    def __init__(self, store: WorkshopStore, runner: web.AppRunner, host: str, port: int) -> None:
        self.store = store
        self.runner = runner
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard with the instructor token in the fragment (never sent to the server)."""
        return f"{self.url}/dashboard#token={self.store.workshop.instructor_token}"

    async def close(self) -> None:
        await self.runner.cleanup()
        self.store.close()

    async def __aenter__(self) -> RunningWorkshop:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


async def run_workshop(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, state_dir: Path | str = ".",
                       *, title: str = "meshkit workshop",
                       outlines: Mapping[str, Sequence[str]] | None = None,
                       max_attendees: int = MAX_ATTENDEES,
                       limits: RoomLimits | None = None) -> RunningWorkshop:
    """Open (or create) the workshop in ``state_dir`` and serve it on ``host:port`` (0 = a free port)."""
    store = WorkshopStore(state_dir, title=title)
    try:
        app = create_app(store, outlines, max_attendees, limits)
    except ValueError:
        store.close()
        raise
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None,
                           handle_signals=False, handler_cancellation=True,
                           keepalive_timeout=app[LIMITS].idle_timeout)
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        store.close()
        raise
    return RunningWorkshop(store, runner, host, int(runner.addresses[0][1]))


def serve(host: str, port: int, state_dir: Path | str, *, title: str = "meshkit workshop",
          announce: Callable[[str], None] = print,
          outlines: Mapping[str, Sequence[str]] | None = None, max_attendees: int = MAX_ATTENDEES,
          limits: RoomLimits | None = None) -> None:
    """Run until SIGINT/SIGTERM (``meshkit workshop serve``), printing the token, code and URLs."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        running = await run_workshop(host, port, state_dir, title=title, outlines=outlines,
                                     max_attendees=max_attendees, limits=limits)
        workshop = running.store.workshop
        announce(f"workshop:         {workshop.title} (state: {running.store.directory})")
        announce(f"instructor token: {workshop.instructor_token}")
        announce(f"join code:        {workshop.join_code}")
        announce(f"room size:        up to {max_attendees} attendees")
        room = limits or RoomLimits()
        announce(f"result limit:     {room.results_per_second:g}/s per attendee "
                 f"(bursts of {room.results_burst})")
        if host in ("0.0.0.0", "::", ""):
            announce("(replace the address below with this machine's address on the room's network)")
        announce(f"attendees join:   {running.url}  (meshkit.lab.join(url, code, name))")
        announce(f"dashboard:        {running.dashboard_url}")
        try:
            await stop.wait()
        finally:
            await running.close()
        announce("workshop server stopped")

    asyncio.run(main())
