"""Access log: one JSON line per request, to a file or stdout, formatted and written off the hot path.

``AccessLogSink(target)`` opens ``target`` (a path, or ``-`` for stdout); ``access_log(sink,
direction)`` is the filter. When access logging is off the pipeline simply leaves this filter out.

What a request pays is a tuple of the values its line needs, taken when its response is
complete (the same moment, so the same bytes, as before). The JSON lines are built once per
event-loop iteration, after the responses of that iteration were written, and written to the
file in batches: when ``MAX_PENDING_LINES`` are waiting or ``FLUSH_INTERVAL`` seconds after the
first of them (Envoy buffers its access log too: ``access_log_flush_interval``, 1 s), and on
``close()`` (proxy shutdown). This module must not change the line format
(tests/proxy/test_accesslog_format.py holds it byte for byte to ``json.dumps``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from meshkit.proxy.bodies import ObservedBody
from meshkit.proxy.filters.metrics import body_size, merged_flags
from meshkit.proxy.http import Filter, Handler, Request, Response

FLUSH_INTERVAL = 0.1  # seconds: the longest a line waits in memory before it is written
MAX_PENDING_LINES = 256  # the buffer's bound: this many lines are written at once

Formatter = Callable[[tuple[Any, ...]], str]  # one entry's values -> its JSON line


class AccessLogSink:
    """Buffers log entries; formats them once per loop iteration, writes them in batches."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._file: IO[str] = sys.stdout if target == "-" else open(target, "a", encoding="utf-8")  # noqa: SIM115
        self._entries: list[tuple[Formatter, tuple[Any, ...]]] = []  # not yet formatted
        self._lines: list[str] = []  # formatted, not yet written
        self._formatting = False  # a call_soon(_format) is pending
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def write(self, entry: dict[str, Any]) -> None:
        self.write_line(json.dumps(entry, separators=(",", ":")))

    def write_line(self, line: str) -> None:
        """Queue one ready-made JSON line (no newline)."""
        self._lines.append(line)
        self._after_format()

    def defer(self, formatter: Formatter, values: tuple[Any, ...]) -> None:
        """Queue ``formatter(values)``, built after this loop iteration's responses are written."""
        self._entries.append((formatter, values))
        if not self._formatting:
            try:
                asyncio.get_running_loop().call_soon(self._format)
            except RuntimeError:  # no loop running (closing, or a unit caller): at once
                self.flush()
                return
            self._formatting = True

    def _format(self) -> None:
        self._formatting = False
        entries, self._entries = self._entries, []
        lines = self._lines
        for formatter, values in entries:
            lines.append(formatter(values))
        self._after_format()

    def _after_format(self) -> None:
        if len(self._lines) >= MAX_PENDING_LINES or self._closed:
            self.flush()
        elif self._timer is None and self._lines:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._on_timer)
            except RuntimeError:
                self.flush()

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Format and write everything queued now."""
        if self._entries:
            entries, self._entries = self._entries, []
            self._lines.extend(formatter(values) for formatter, values in entries)
        if self._lines:
            lines, self._lines = self._lines, []
            if self._file.closed:  # a stream that ends after close(): nothing to write to
                return
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._file is not sys.stdout:
            self._file.close()


_string = json.encoder.encode_basestring_ascii  # C: str -> JSON literal


def _nullable(value: str | None) -> str:
    return "null" if value is None else _string(value)


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

    def line(entry: tuple[Any, ...]) -> str:
        wall, elapsed, request, status, flags, upstream_host, received, sent = entry
        # Built by hand (strings escaped by the json module's C encoder): the same bytes as
        # json.dumps(entry, separators=(",", ":")), at a third of the cost.
        request_id = user_agent = forwarded_for = None
        for name, value in request.headers.items():  # one pass for the three headers logged
            if name == "x-request-id":
                request_id = request_id if request_id is not None else value
            elif name == "user-agent":
                user_agent = user_agent if user_agent is not None else value
            elif name == "x-forwarded-for" and forwarded_for is None:
                forwarded_for = value
        return (
            f'{{"start_time":"{clock.stamp(wall - elapsed)}","method":{_string(request.method)},'
            f'"path":{_string(request.path)},"authority":{_string(request.authority)},'
            f'"protocol":{_string("HTTP/" + request.version)},"status":{int(status)},'
            f'"response_flags":{_string(flags)},'
            f'"duration_ms":{float(round(elapsed * 1000.0, 3))!r},"upstream_host":{_nullable(upstream_host)},'
            f'"upstream_cluster":{_nullable(request.cluster)},"request_id":{_nullable(request_id)},'
            f'"bytes_received":{int(received)},"bytes_sent":{int(sent)},'
            f'"user_agent":{_nullable(user_agent)},"x_forwarded_for":{_nullable(forwarded_for)},'
            f'"direction":{direction_json}}}'
        )

    def emit(request: Request, response: Response | None, status: int, sent: int) -> None:
        # The hot path only takes the values that change after this moment (times, flags, the
        # endpoint); the request's method, path, headers and cluster are final once it is answered.
        elapsed = time.monotonic() - request.start
        endpoint = request.endpoint
        upstream_host = (response.upstream_host if response is not None else "") or (
            endpoint.hostport if endpoint is not None else None
        )
        body = request.body
        sink.defer(line, (
            time.time(), elapsed, request, status, merged_flags(request, response), upstream_host,
            len(body) if isinstance(body, bytes) else body_size(body), sent,
        ))

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
