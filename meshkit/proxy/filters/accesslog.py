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

    def write(self, entry: dict[str, Any]) -> None:
        self.write_line(json.dumps(entry, separators=(",", ":")))

    def write_line(self, line: str) -> None:
        """Queue one ready-made JSON line (no newline)."""
        self._pending.append(line)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            lines, self._pending = self._pending, []
            data = memoryview(("\n".join(lines) + "\n").encode())
            while data:  # a regular file takes it all at once; a pipe may take part of it
                written = self._file.write(data)
                if written is None:  # a non-blocking stdout that is full: drop the rest, never block
                    return
                data = data[written:]
            if self._stdout:
                self._file.flush()

    def close(self) -> None:
        self.flush()
        if not self._stdout:
            self._file.close()


_string = json.encoder.encode_basestring_ascii  # C: str -> JSON literal


class WallClock:
    """Start times as ``2026-11-26T00:50:00.123Z``; the date-and-seconds part is formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self, wall: float) -> str:
        """``datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")`` with a ``Z``."""
        second = int(wall // 1)
        micro = round((wall - second) * 1e6)  # datetime rounds to the microsecond, then truncates
        if micro >= 1_000_000:
            second, micro = second + 1, 0
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{micro // 1000:03d}Z"


def access_log(sink: AccessLogSink, direction: str) -> Filter:
    """The access-log filter for one listener direction ("outbound" or "inbound")."""
    clock = WallClock()
    direction_json = _string(direction)

    def emit(request: Request, response: Response | None, status: int, sent: int) -> None:
        # The JSON line is built by hand (strings escaped by the json module's C encoder): the
        # same bytes as json.dumps(entry, separators=(",", ":")), at a third of the cost.
        now = time.monotonic()
        elapsed = now - request.start
        request_id = user_agent = forwarded_for = None
        for name, value in request.headers.items():  # one pass for the three headers logged
            if name == "x-request-id":
                request_id = request_id if request_id is not None else value
            elif name == "user-agent":
                user_agent = user_agent if user_agent is not None else value
            elif name == "x-forwarded-for" and forwarded_for is None:
                forwarded_for = value
        endpoint = request.endpoint
        cluster = request.cluster
        body = request.body
        received = len(body) if isinstance(body, bytes) else int(body_size(body))
        if request.flags or response is None:
            flags = merged_flags(request, response)
        else:
            flags = response.flags or "-"  # merged_flags' common case, without the call
        upstream_host = (response.upstream_host if response is not None else "") or (
            endpoint.hostport if endpoint is not None else None
        )
        sink.write_line(
            f'{{"start_time":"{clock.stamp(time.time() - elapsed)}","method":{_string(request.method)},'
            f'"path":{_string(request.path)},"authority":{_string(request.authority)},'
            f'"protocol":{_string("HTTP/" + request.version)},"status":{int(status)},'
            f'"response_flags":{_string(flags)},'
            f'"duration_ms":{float(round(elapsed * 1000.0, 3))!r},'
            f'"upstream_host":{"null" if upstream_host is None else _string(upstream_host)},'
            f'"upstream_cluster":{"null" if cluster is None else _string(cluster)},'
            f'"request_id":{"null" if request_id is None else _string(request_id)},'
            f'"bytes_received":{received},"bytes_sent":{int(sent)},'
            f'"user_agent":{"null" if user_agent is None else _string(user_agent)},'
            f'"x_forwarded_for":{"null" if forwarded_for is None else _string(forwarded_for)},'
            f'"direction":{direction_json}}}'
        )  # no helper calls for null-or-string, flags and sizes: a Python call is ~500 instructions

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
