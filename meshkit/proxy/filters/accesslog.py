"""Access log: one JSON line per request, to a file or stdout, written in batches.

``AccessLogSink(target)`` opens ``target`` (a path, or ``-`` for stdout) and writes the
lines of one event-loop iteration together, with one write(2) (a file is opened unbuffered
in binary: no text layer to encode through and flush); ``access_log(sink, direction)`` is the
filter. A line is in the file before its client can send the next command (``meshkit logs
--access``, the labs and the tests read it right after a request), so lines are not held longer.
When access logging is off the pipeline simply leaves this filter out.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from meshkit.proxy.bodies import ObservedBody
from meshkit.proxy.filters.metrics import body_size, merged_flags
from meshkit.proxy.http import Filter, Handler, Request, Response


class AccessLogSink:
    """Buffers log lines and writes them once per loop iteration."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._stdout = target == "-"
        self._file: IO[bytes] = sys.stdout.buffer if self._stdout else open(target, "ab", buffering=0)  # noqa: SIM115
        self._pending: list[str] = []
        self._scheduled = False
        # The loop the flush is scheduled on, remembered: asyncio.get_running_loop() makes a
        # getpid() system call each time.
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, entry: dict[str, Any]) -> None:
        self.write_line(json.dumps(entry, separators=(",", ":")))

    def write_line(self, line: str) -> None:
        """Queue one ready-made JSON line (no newline)."""
        self._pending.append(line)
        if not self._scheduled:
            self.schedule()

    def schedule(self) -> None:
        """Flush at the next loop iteration (at once when no loop runs)."""
        self._scheduled = True
        loop = self._loop
        if loop is None or not loop.is_running():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        lines = self._pending
        if lines:
            self._pending = []
            lines.append("")  # the last line's newline
            data = "\n".join(lines).encode()
            written = self._file.write(data)  # a regular file takes it all at once
            if written is not None and written < len(data):
                self._write_rest(memoryview(data)[written:])
            if self._stdout:
                self._file.flush()

    def _write_rest(self, data: memoryview) -> None:
        while data:  # a pipe may take part of it
            written = self._file.write(data)
            if written is None:  # a non-blocking stdout that is full: drop the rest, never block
                return
            data = data[written:]

    def close(self) -> None:
        self.flush()
        if not self._stdout:
            self._file.close()


_string = json.encoder.encode_basestring_ascii  # C: str -> JSON literal
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # a start time's end, by millisecond
# Parts of the line repeat from request to request (the same method, path and status, the same
# upstream, the same client): each is encoded once and kept in a small per-filter cache keyed by
# its values. A cache is emptied when it reaches _CACHE_ENTRIES; a part longer than _CACHE_CHARS
# (a long path) is encoded every time instead of kept.
_CACHE_ENTRIES = 256  # 3 caches x 2 directions x 256 x (part + key, ~1 KB at most): ~1.5 MB at worst
_CACHE_CHARS = 384


class WallClock:
    """Start times as ``2026-11-26T00:50:00.123Z``; the date-and-seconds part is formatted once a second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def enter(self, second: int) -> None:
        """Make ``second`` (Unix time) the current one: its ``2026-11-26T00:50:00`` part."""
        self.second = second
        self.prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")

    def stamp(self, wall: float) -> str:
        """``datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")`` with a ``Z``."""
        second = int(wall // 1)
        micro = round((wall - second) * 1e6)  # datetime rounds to the microsecond, then truncates
        if micro >= 1_000_000:
            second, micro = second + 1, 0
        if second != self.second:
            self.enter(second)
        return self.prefix + _MILLIS[micro // 1000]


def _remember(cache: dict[Any, str], key: Any, part: str) -> str:
    if len(part) <= _CACHE_CHARS:
        if len(cache) >= _CACHE_ENTRIES:
            cache.clear()
        cache[key] = part
    return part


def _request_part(key: tuple[str, str, str, str, int, str]) -> str:
    method, path, authority, version, status, flags = key
    return (
        f'"method":{_string(method)},"path":{_string(path)},"authority":{_string(authority)},'
        f'"protocol":{_string("HTTP/" + version)},"status":{int(status)},"response_flags":{_string(flags)}'
    )


def _upstream_part(key: tuple[str | None, str | None, str | None]) -> str:
    host, cluster, route = key
    return (
        f'"upstream_host":{"null" if host is None else _string(host)},'
        f'"upstream_cluster":{"null" if cluster is None else _string(cluster)},'
        f'"route_name":{"null" if route is None else _string(route)}'
    )


def _client_part(key: tuple[int, int, str | None, str | None], direction: str) -> str:
    received, sent, user_agent, forwarded_for = key
    return (
        f'"bytes_received":{int(received)},"bytes_sent":{int(sent)},'
        f'"user_agent":{"null" if user_agent is None else _string(user_agent)},'
        f'"x_forwarded_for":{"null" if forwarded_for is None else _string(forwarded_for)},'
        f'"direction":{_string(direction)}}}'
    )


_LOGGED_HEADERS = frozenset({"x-request-id", "user-agent", "x-forwarded-for"})


def access_log(sink: AccessLogSink, direction: str) -> Filter:
    """The access-log filter for one listener direction ("outbound" or "inbound")."""
    clock = WallClock()
    requests: dict[tuple[str, str, str, str, int, str], str] = {}
    upstreams: dict[tuple[str | None, str | None, str | None], str] = {}
    clients: dict[tuple[int, int, str | None, str | None], str] = {}

    def emit(request: Request, response: Response | None, status: int, sent: int) -> None:
        # The JSON line is built by hand (strings escaped by the json module's C encoder, repeated
        # parts from the caches above): the same bytes as json.dumps(entry, separators=(",", ":")).
        # No helper calls on the common path: a Python call is ~500 instructions.
        now = time.monotonic()
        elapsed = now - request.start
        request_id = user_agent = forwarded_for = None
        for name, value in request.headers.items():  # one pass for the three headers logged
            if name in _LOGGED_HEADERS:
                if name == "x-request-id":
                    request_id = request_id if request_id is not None else value
                elif name == "user-agent":
                    user_agent = user_agent if user_agent is not None else value
                elif forwarded_for is None:
                    forwarded_for = value
        endpoint = request.endpoint
        body = request.body
        received = len(body) if isinstance(body, bytes) else int(body_size(body))
        if request.flags or response is None:
            flags = merged_flags(request, response)
        else:
            flags = response.flags or "-"  # merged_flags' common case, without the call
        upstream_host = (response.upstream_host if response is not None else "") or (
            endpoint.hostport if endpoint is not None else None
        )
        stamp = clock.stamp(time.time() - elapsed)
        # round(ms, 3) and its repr: the same digits (both correctly rounded), at half the cost
        duration = f"{elapsed * 1000.0:.3f}".rstrip("0")
        if duration[-1] == ".":
            duration += "0"
        key = (request.method, request.path, request.authority, request.version, status, flags)
        head = requests.get(key) or _remember(requests, key, _request_part(key))
        route = request.route  # Envoy's %ROUTE_NAME%: the matched route's name (None before routing)
        hop = (upstream_host, request.cluster, route.get("name") if route is not None else None)
        upstream = upstreams.get(hop) or _remember(upstreams, hop, _upstream_part(hop))
        peer = (received, sent, user_agent, forwarded_for)
        client = clients.get(peer) or _remember(clients, peer, _client_part(peer, direction))
        line = (
            f'{{"start_time":"{stamp}",{head},"duration_ms":{duration},'
            f'{upstream},"request_id":{"null" if request_id is None else _string(request_id)},{client}'
        )
        sink._pending.append(line)  # sink.write_line(line), inline
        if not sink._scheduled:
            sink.schedule()

    async def accesslog(request: Request, call_next: Handler) -> Response:
        try:
            response = await call_next(request)
        except BaseException:
            emit(request, None, 0, 0)
            raise
        body = response.body
        if isinstance(body, bytes):
            emit(request, response, response.status, len(body))
        else:
            response.body = ObservedBody.observe(
                body, lambda b: emit(request, response, response.status, b.sent)
            )
        return response

    return accesslog
